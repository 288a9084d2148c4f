"""The Background tab driven through gradio_client on a real server (tiny models, offline)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from extensions.background import masks

pytestmark = pytest.mark.slow


def subject_png(path, alpha=False):
    rng = np.random.default_rng(1)
    data = np.zeros((96, 128, 4), np.uint8)
    data[..., :3] = (30, 60, 200)
    data[..., 3] = 255 if not alpha else 0
    data[24:72, 40:96, :3] = rng.integers(100, 256, (48, 56, 3), dtype=np.uint8)
    data[24:72, 40:96, 3] = 255
    image = Image.fromarray(data, "RGBA")
    (image if alpha else image.convert("RGB")).save(path)
    truth = np.zeros((96, 128), bool)
    truth[24:72, 40:96] = True
    return truth


@pytest.fixture(scope="module")
def client(live_server):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(live_server["url"], verbose=False)


def replace_args(path, subject="", box=0.35, detector="tiny-grounding-dino", segmenter="grabcut", **extra):
    from gradio_client import handle_file

    values = dict(image=handle_file(str(path)), subject=subject, detector=detector, box=box, text=0.25, keep=[],
                  segmenter=segmenter, grow=0, largest=True, holes=False, invert=False, alpha=True, editor=None,
                  background="a sunny beach", negative="", model="tiny", sampler="Euler a", schedule="Automatic",
                  steps=3, cfg=5.0, strength=1.0, seed=7, erode=3, feather=4, decontaminate=0.5, side=256)
    values.update(extra)
    return list(values.values())


def test_detect_lists_every_box_with_label_and_score(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "scene.png"
    subject_png(path)
    boxes, keep, status = client.predict(handle_file(str(path)), "a red square", "tiny-grounding-dino", 0.0, 0.0,
                                         256, api_name="/background_detect")
    assert Image.open(boxes).size == (128, 96)
    assert len(keep["value"]) == 10 and all(label.startswith("#") for label in keep["value"])
    assert "square" in keep["value"][0] and float(keep["value"][0].rsplit(" ", 1)[1]) <= 1.0
    assert "10 detection(s)" in status


def test_no_detection_is_a_message_not_an_error(client, tmp_path):
    path = tmp_path / "scene.png"
    subject_png(path)
    outputs = client.predict(*replace_args(path, subject="a dog", box=1.0), api_name="/background_replace")
    status = outputs[3]
    assert "Nothing matching 'a dog'" in status and "threshold" in status


def test_replace_through_the_api_keeps_the_subject_pixel_identical(client, tmp_path, live_server):
    path = tmp_path / "cutout.png"
    truth = subject_png(path, alpha=True)  # transparent background: its alpha is the mask
    gallery, info, mask_file, status = client.predict(*replace_args(path), api_name="/background_replace")[:4]
    assert "Done" in status, status
    result = Image.open(gallery[0]["image"]).convert("RGB")
    assert result.size == (128, 96)
    original = np.asarray(Image.open(path).convert("RGBA"))[..., :3]
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(result)[core], original[core])
    assert "a sunny beach" in info and "Steps: 3" in info and "Seed: 7" in info
    assert np.array_equal(masks.image_to_mask(Image.open(mask_file)), truth)


def test_odd_uploads_give_a_result_or_a_message(client, tmp_path):
    grey = tmp_path / "grey16.png"
    Image.fromarray(np.full((64, 80), 40000, np.uint16)).save(grey)
    outputs = client.predict(*replace_args(grey, subject="a dog", box=1.0), api_name="/background_replace")
    assert "Nothing matching" in outputs[3]
    # a palette PNG with a transparent colour: its transparency is the subject mask, as with RGBA
    palette = tmp_path / "palette.png"
    truth = subject_png(palette, alpha=True)
    Image.open(palette).convert("P", palette=Image.Palette.ADAPTIVE).save(palette)
    gallery, _info, mask_file, status = client.predict(*replace_args(palette), api_name="/background_replace")[:4]
    assert "Done" in status, status
    assert np.array_equal(masks.image_to_mask(Image.open(mask_file)), truth)
    original = np.asarray(Image.open(palette).convert("RGB"))
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))[core], original[core])


def test_a_hand_painted_mask_from_the_editor_is_used(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "scene.png"
    subject_png(path)
    painted = np.zeros((96, 128), bool)
    painted[10:50, 10:60] = True          # the user painted another region than any detection
    mask_path = tmp_path / "painted.png"
    masks.mask_to_image(painted).convert("RGB").save(mask_path)
    editor = {"background": handle_file(str(mask_path)), "layers": [], "composite": handle_file(str(mask_path))}
    gallery, info, mask_file, status = client.predict(*replace_args(path, subject="the square", editor=editor),
                                                      api_name="/background_replace")[:4]
    assert "Done" in status, status
    assert np.array_equal(masks.image_to_mask(Image.open(mask_file)), painted)
    assert "Mask: edited" in info
    core = masks.grow(painted, -3)
    original = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))[core], original[core])


def test_large_and_exif_rotated_uploads_come_back_at_their_own_size(client, tmp_path):
    big = tmp_path / "big.png"
    data = np.zeros((1500, 2400, 4), np.uint8)
    data[..., :3] = (30, 60, 200)
    data[400:1100, 800:1600] = (220, 40, 40, 255)
    Image.fromarray(data, "RGBA").save(big)
    gallery, _, _, status = client.predict(*replace_args(big, side=256), api_name="/background_replace")[:4]
    assert "Done" in status, status
    result = Image.open(gallery[0]["image"])
    assert result.size == (2400, 1500)
    assert result.convert("RGB").getpixel((1200, 750)) == (220, 40, 40)

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (120, 80), (200, 10, 10)).save(rotated, exif=exif)
    outputs = client.predict(*replace_args(rotated, subject="a dog", box=1.0), api_name="/background_replace")
    assert "Nothing matching" in outputs[3]
    from gradio_client import handle_file

    boxes, _, _ = client.predict(handle_file(str(rotated)), "a dog", "tiny-grounding-dino", 0.0, 0.0, 256,
                                 api_name="/background_detect")
    assert Image.open(boxes).size == (80, 120)   # turned upright once (not twice)


def test_detect_then_make_mask_with_grabcut_on_the_ticked_box(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "scene.png"
    subject_png(path)
    _, keep, _ = client.predict(handle_file(str(path)), "a red square", "tiny-grounding-dino", 0.0, 0.0, 256,
                                api_name="/background_detect")
    first = keep["value"][0]
    editor, preview, status = client.predict(handle_file(str(path)), [first], "grabcut", 0, True, False, False, True,
                                             256, api_name="/background_mask")
    assert "Mask covers" in status
    assert Image.open(preview).size == (128, 96)
    assert Image.open(editor["background"]).size == (128, 96)
    with pytest.raises(Exception, match="No detection is selected"):
        client.predict(handle_file(str(path)), [], "grabcut", 0, True, False, False, True, 256,
                       api_name="/background_mask")
