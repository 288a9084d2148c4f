"""Mask tools, input normalisation and the subject composite of the background extension."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from extensions.background import composite, masks


def square(size=32, lo=10, hi=20):
    mask = np.zeros((size, size), dtype=bool)
    mask[lo:hi, lo:hi] = True
    return mask


def test_grow_and_shrink_by_known_amounts():
    mask = square()
    grown = masks.grow(mask, 2)
    assert grown.sum() > mask.sum() and grown[mask].all()
    assert grown[8, 15] and not grown[7, 15]          # 2 px above the top edge, not 3
    assert grown[8, 8] is np.False_ or not grown[8, 8]  # corners are rounded (disc), not square
    shrunk = masks.grow(mask, -2)
    assert shrunk.sum() == 6 * 6 and shrunk[12:18, 12:18].all()
    assert masks.grow(mask, 0).sum() == mask.sum()
    assert not masks.grow(np.zeros((8, 8), bool), 3).any()


def test_shrink_treats_the_border_as_background():
    mask = np.ones((10, 10), dtype=bool)
    shrunk = masks.grow(mask, -1)
    assert shrunk.sum() == 8 * 8 and not shrunk[0].any()


def test_feather_is_soft_only_near_the_edge():
    alpha = masks.feather(square(64, 20, 44), 4)
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    assert alpha[32, 32] > 0.999 and alpha[2, 2] < 1e-3
    assert 0.3 < alpha[20, 32] < 0.7                 # the edge itself is half way
    assert np.array_equal(masks.feather(square(), 0), square().astype(np.float32))


def test_invert_keep_largest_fill_holes():
    mask = square()
    assert masks.invert(mask).sum() == 32 * 32 - 100
    two = mask.copy()
    two[0:2, 0:2] = True
    assert masks.keep_largest(two).sum() == 100
    ring = mask.copy()
    ring[14:16, 14:16] = False
    assert masks.fill_holes(ring).sum() == 100
    chained = masks.apply_mask_tools(two, grow_pixels=-1, largest=True, inverted=True)
    assert chained.sum() == 32 * 32 - 64


def test_overlay_and_mask_round_trip():
    image = Image.new("RGB", (32, 32), (0, 0, 255))
    preview = masks.overlay(image, square())
    assert preview.size == (32, 32)
    assert preview.getpixel((15, 15)) == (0, 0, 255)      # subject untouched
    assert preview.getpixel((2, 2)) != (0, 0, 255)        # background tinted
    assert np.array_equal(masks.image_to_mask(masks.mask_to_image(square())), square())
    with pytest.raises(ValueError):
        masks.overlay(image, np.zeros((8, 8), bool))


def test_boxes_to_mask_clips_to_the_image():
    mask = masks.boxes_to_mask([(-5, 2, 4.2, 6), (30, 30, 99, 99)], (32, 32))
    assert mask[2:6, 0:5].all() and mask[30:, 30:].all() and mask.sum() == 4 * 5 + 4


def _exif_rotated_jpeg() -> Image.Image:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("kind", ["rgba", "la", "grayscale", "palette", "16bit", "exif", "cmyk", "1bit", "rgb"])
def test_prepare_image_handles_odd_inputs(kind):
    size = (40, 20)
    if kind == "rgba":
        data = np.zeros((20, 40, 4), np.uint8)
        data[..., 0] = 255
        data[5:15, 10:30, 3] = 255
        image = Image.fromarray(data, "RGBA")
    elif kind == "la":
        image = Image.new("LA", size, (100, 0))
        image.paste((100, 255), (0, 0, 10, 10))
    elif kind == "grayscale":
        image = Image.new("L", size, 77)
    elif kind == "palette":
        image = Image.new("RGB", size, (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    elif kind == "16bit":
        image = Image.fromarray(np.full((20, 40), 65535, np.uint16))
        assert image.mode.startswith("I;16")
    elif kind == "exif":
        image = _exif_rotated_jpeg()
    elif kind == "cmyk":
        image = Image.new("CMYK", size, (0, 0, 0, 0))
    elif kind == "1bit":
        image = Image.new("1", size, 1)
    else:
        image = Image.new("RGB", size, (1, 2, 3))
    prepared = masks.prepare_image(image)
    assert prepared.image.mode == "RGB"
    if kind == "exif":
        assert prepared.size == (20, 40) and any("EXIF" in note for note in prepared.notes)
    else:
        assert prepared.size == size
    pixel = prepared.image.getpixel((prepared.size[0] - 5, 2))
    if kind == "rgba":
        assert prepared.alpha_hint is not None and prepared.alpha_hint.sum() == 200
        assert pixel == (255, 255, 255) and prepared.image.getpixel((15, 8)) == (255, 0, 0)
    elif kind == "la":
        assert prepared.alpha_hint.sum() == 100
    elif kind == "16bit":
        assert pixel == (255, 255, 255)
    elif kind == "grayscale":
        assert pixel == (77, 77, 77)
    elif kind == "palette":
        assert pixel == (10, 200, 30)
    else:
        assert prepared.alpha_hint is None
    with pytest.raises(ValueError):
        masks.prepare_image(None)


def test_model_size_keeps_aspect_and_multiples_of_8():
    big = Image.new("RGB", (3000, 2000))
    small = masks.to_model_size(big, 512)
    assert small.size == (512, 344)
    assert masks.to_model_size(Image.new("RGB", (64, 64)), 512).size == (64, 64)
    assert masks.to_model_size(Image.new("RGB", (3, 500)), 512).size[0] == 8


def test_composite_keeps_the_eroded_subject_pixel_identical():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    generated = Image.new("RGB", (32, 24), (0, 255, 0))   # other size: resized to the original's
    mask = np.zeros((48, 64), bool)
    mask[10:38, 16:48] = True
    out = composite.composite_subject(original, generated, mask, erode=3, feather=4, decontaminate=0.7)
    src, res = np.asarray(original), np.asarray(out)
    core = masks.grow(mask, -3)
    assert out.size == original.size
    assert np.array_equal(res[core], src[core])
    far = ~masks.grow(mask, 3)
    assert (res[far] == (0, 255, 0)).all()
    ring = mask & ~core
    assert not np.array_equal(res[ring], src[ring])      # the edge blends
    alpha, alpha_core = composite.blend_alpha(mask, 3, 4)
    assert (alpha[alpha_core] == 1).all() and alpha.max() == 1 and alpha.min() == 0


def test_decontamination_removes_the_old_background_tint():
    original = np.zeros((40, 40, 3), np.uint8)
    original[:] = (0, 0, 255)                         # blue old background
    original[10:30, 10:30] = (255, 0, 0)              # red subject
    original[9:31, 9] = original[9:31, 30] = (128, 0, 128)   # purple halo ring at the edge
    mask = np.zeros((40, 40), bool)
    mask[9:31, 9:31] = True
    generated = Image.new("RGB", (40, 40), (0, 255, 0))
    plain = np.asarray(composite.composite_subject(Image.fromarray(original), generated, mask, 1, 3, 0.0))
    clean = np.asarray(composite.composite_subject(Image.fromarray(original), generated, mask, 1, 3, 1.0))
    assert clean[20, 9, 2] < plain[20, 9, 2]          # less blue at the edge
    with pytest.raises(ValueError):
        composite.composite_subject(Image.fromarray(original), generated, mask[:10])


def test_composite_of_a_subject_touching_the_border_and_an_empty_mask():
    rng = np.random.default_rng(5)
    original = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    generated = Image.new("RGB", (50, 40), (9, 9, 9))
    mask = np.zeros((40, 50), bool)
    mask[0:25, 30:50] = True                   # touches the top and right borders
    out = np.asarray(composite.composite_subject(original, generated, mask, 2, 3, 1.0))
    core = masks.grow(mask, -2)
    assert np.array_equal(out[core], np.asarray(original)[core])
    assert (out[30:, :20] == 9).all()
    empty = composite.composite_subject(original, generated, np.zeros((40, 50), bool))
    assert (np.asarray(empty) == 9).all()
