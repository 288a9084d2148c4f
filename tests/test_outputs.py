"""Tests for webui.outputs (saving PNGs with A1111 infotext)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import threading  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

from webui import outputs  # noqa: E402
from webui.infotext import build_infotext, parse_infotext  # noqa: E402
from webui.outputs import read_infotext, save_image  # noqa: E402

NOW = datetime(2024, 5, 6, 13, 14, 15)
INFOTEXT = build_infotext(
    "a cat, sitting", "blurry",
    {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 42, "Size": "16x16", "Lora hashes": "a: 1, b: 2"},
)


def _image(mode="RGB", size=(16, 16)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def test_saves_a1111_layout_and_numbers(tmp_path):
    first = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 42, now=NOW)
    second = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 43, now=NOW)
    third = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 42, now=NOW)
    folder = tmp_path / "txt2img" / "2024-05-06"
    assert first == folder / "00000-42.png"
    assert second == folder / "00001-43.png"
    assert third == folder / "00002-42.png"
    assert sorted(p.name for p in folder.iterdir()) == ["00000-42.png", "00001-43.png", "00002-42.png"]
    other_day = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 42, now=datetime(2024, 5, 7))
    assert other_day == tmp_path / "txt2img" / "2024-05-07" / "00000-42.png"


def test_continues_after_the_highest_number(tmp_path):
    folder = tmp_path / "img2img" / "2024-05-06"
    folder.mkdir(parents=True)
    for name in ["00003-1.png", "00011-2.png", "notes.txt", "grid-0004.png", "abc-00099.png"]:
        (folder / name).write_bytes(b"")
    (folder / "00050-dir").mkdir()  # A1111 counts any numbered entry
    path = save_image(_image(), tmp_path, "img2img", INFOTEXT, 7, now=NOW)
    assert path.name == "00051-7.png"


def test_large_numbers_and_negative_seed(tmp_path):
    folder = tmp_path / "t" / "2024-05-06"
    folder.mkdir(parents=True)
    (folder / "99999-1.png").write_bytes(b"")
    assert save_image(_image(), tmp_path, "t", "", 5, now=NOW).name == "100000-5.png"
    assert save_image(_image(), tmp_path, "t", "", -1, now=NOW).name == "100001--1.png"


def test_default_date_is_today(tmp_path):
    before = datetime.now().strftime("%Y-%m-%d")
    path = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 1)
    after = datetime.now().strftime("%Y-%m-%d")
    assert path.parent.name in (before, after)
    assert path.parent.parent == tmp_path / "txt2img"


def test_infotext_in_parameters_chunk(tmp_path):
    path = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 42, now=NOW)
    with Image.open(path) as image:
        assert image.format == "PNG"
        # This is exactly how A1111's PNG Info tab reads it.
        assert image.info["parameters"] == INFOTEXT
        assert image.text["parameters"] == INFOTEXT
    assert read_infotext(path) == INFOTEXT
    assert read_infotext(str(path)) == INFOTEXT
    assert parse_infotext(read_infotext(path))[2]["Lora hashes"] == "a: 1, b: 2"


def test_infotext_is_a_tEXt_chunk(tmp_path):
    path = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 42, now=NOW)
    data = path.read_bytes()
    assert b"tEXtparameters\x00" + INFOTEXT.encode("latin-1") in data
    assert data.index(b"tEXt") < data.index(b"IDAT")  # before the image data, like A1111


def test_unicode_infotext(tmp_path):
    text = build_infotext("猫, 🙂 café", "ぼやけ", {"Seed": 1, "Model": "モデル"})
    path = save_image(_image(), tmp_path, "txt2img", text, 1, now=NOW)
    assert read_infotext(path) == text
    with Image.open(path) as image:
        assert image.info["parameters"] == text


def test_empty_infotext_stores_nothing(tmp_path):
    path = save_image(_image(), tmp_path, "txt2img", "", 1, now=NOW)
    assert read_infotext(path) is None


def test_read_from_open_image(tmp_path):
    path = save_image(_image(), tmp_path, "txt2img", INFOTEXT, 42, now=NOW)
    with Image.open(path) as image:
        assert read_infotext(image) == INFOTEXT
    plain = _image()
    assert read_infotext(plain) is None
    plain.info["parameters"] = "from info"
    assert read_infotext(plain) == "from info"


def test_read_absent_and_compressed(tmp_path):
    bare = tmp_path / "bare.png"
    _image().save(bare)
    assert read_infotext(bare) is None
    other = tmp_path / "other.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "not ours")
    _image().save(other, pnginfo=info)
    assert read_infotext(other) is None
    zipped = tmp_path / "zipped.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT, zip=True)
    _image().save(zipped, pnginfo=info)
    assert read_infotext(zipped) == INFOTEXT


def test_read_a1111_jpeg_exif_user_comment(tmp_path):
    """A1111 stores infotext of JPEG/WebP files in EXIF UserComment (piexif, UTF-16 BE)."""
    for fmt, suffix in (("JPEG", "jpg"), ("WEBP", "webp")):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")
        path = tmp_path / f"a1111.{suffix}"
        _image().save(path, format=fmt, exif=exif)
        assert read_infotext(path) == INFOTEXT
    plain = tmp_path / "plain.jpg"
    _image().save(plain, format="JPEG")
    assert read_infotext(plain) is None


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_infotext(tmp_path / "nope.png")


@pytest.mark.parametrize(
    "task",
    ["", "../escape", "..", ".", "a/b", "a\\b", "/abs", "txt2img/../../x", "with space", "tab\t", "new\nline",
     "ünï", "x.y", "CON", "nul", "Com1", None, 5],
)
def test_task_must_be_a_simple_name(tmp_path, task):
    with pytest.raises(ValueError):
        save_image(_image(), tmp_path / "out", task, INFOTEXT, 1, now=NOW)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", ["txt2img", "img2img", "extras", "lora-training", "Task_2"])
def test_valid_task_names(tmp_path, task):
    assert save_image(_image(), tmp_path, task, "", 1, now=NOW).parent.parent.name == task


@pytest.mark.parametrize(
    "mode,expected",
    [("RGB", "RGB"), ("RGBA", "RGBA"), ("L", "L"), ("LA", "LA"), ("1", "L"), ("CMYK", "RGB"), ("YCbCr", "RGB"),
     ("I;16", "L"), ("I", "L"), ("F", "L")],
)
def test_modes(tmp_path, mode, expected):
    image = _image(mode)
    path = save_image(image, tmp_path, "txt2img", INFOTEXT, 1, now=NOW)
    with Image.open(path) as saved:
        assert saved.mode == expected
        assert saved.size == image.size
        assert saved.info["parameters"] == INFOTEXT


def test_rgba_keeps_alpha_and_pixels(tmp_path):
    image = _image("RGBA")
    image.putpixel((0, 0), (10, 20, 30, 0))
    path = save_image(image, tmp_path, "txt2img", "", 1, now=NOW)
    with Image.open(path) as saved:
        assert saved.getpixel((0, 0)) == (10, 20, 30, 0)
        assert np.array_equal(np.asarray(saved), np.asarray(image))


def test_rgb_pixels_are_lossless(tmp_path):
    image = _image()
    path = save_image(image, tmp_path, "txt2img", INFOTEXT, 1, now=NOW)
    with Image.open(path) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(image))


def test_palette_images(tmp_path):
    plain = _image().quantize(16)
    assert plain.mode == "P"
    with Image.open(save_image(plain, tmp_path, "t", "", 1, now=NOW)) as saved:
        assert saved.mode == "RGB"
        assert np.array_equal(np.asarray(saved), np.asarray(plain.convert("RGB")))
    transparent = _image().quantize(16)
    transparent.info["transparency"] = 0
    with Image.open(save_image(transparent, tmp_path, "t", "", 2, now=NOW)) as saved:
        assert saved.mode == "RGBA"


def test_sixteen_bit_is_scaled(tmp_path):
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    with Image.open(save_image(image, tmp_path, "t", "", 1, now=NOW)) as saved:
        assert saved.mode == "L" and saved.getpixel((0, 0)) == 255
    image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    with Image.open(save_image(image, tmp_path, "t", "", 2, now=NOW)) as saved:
        assert saved.getpixel((0, 0)) in (127, 128)
    eight_bit_in_i = Image.fromarray(np.full((4, 4), 200, dtype=np.uint8)).convert("I")
    with Image.open(save_image(eight_bit_in_i, tmp_path, "t", "", 3, now=NOW)) as saved:
        assert saved.getpixel((0, 0)) == 200
    sixteen_bit_png = tmp_path / "sixteen.png"
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(sixteen_bit_png)
    with Image.open(sixteen_bit_png) as opened, Image.open(save_image(opened, tmp_path, "t", "", 4, now=NOW)) as saved:
        assert saved.getpixel((0, 0)) == 128


def test_input_image_is_not_modified(tmp_path):
    image = _image("CMYK")
    image.info["parameters"] = "old"
    save_image(image, tmp_path, "t", INFOTEXT, 1, now=NOW)
    assert image.mode == "CMYK"
    assert image.info["parameters"] == "old"


def test_threads_never_share_a_number(tmp_path):
    errors = []
    paths = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(index):
        try:
            barrier.wait()
            for i in range(8):
                path = save_image(_image(size=(8, 8)), tmp_path, "txt2img", f"Seed: {index}", index * 100 + i,
                                  now=NOW)
                with lock:
                    paths.append(path)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    numbers = sorted(int(p.name.split("-")[0]) for p in paths)
    assert numbers == list(range(64))
    assert len(set(paths)) == 64
    for path in paths:
        assert read_infotext(path).startswith("Seed: ")


def test_same_name_taken_meanwhile(tmp_path, monkeypatch):
    """Another writer created our exact file name between the scan and the create: retry."""
    folder = tmp_path / "t" / "2024-05-06"
    folder.mkdir(parents=True)
    (folder / "00000-7.png").write_bytes(b"theirs")
    real = outputs._next_number
    calls = iter([0])
    monkeypatch.setattr(outputs, "_next_number", lambda f: _stale(calls, real, f))
    path = save_image(_image(), tmp_path, "t", "", 7, now=NOW)
    assert path.name == "00001-7.png"
    assert (folder / "00000-7.png").read_bytes() == b"theirs"


def _stale(calls, real, folder):
    """First call: a stale answer (0); later calls: the real scan."""
    value = next(calls, None)
    return real(folder) if value is None else value


def test_same_number_other_seed_taken_meanwhile(tmp_path, monkeypatch):
    """Another process took the same number with another seed: back off, never share a number."""
    folder = tmp_path / "t" / "2024-05-06"
    folder.mkdir(parents=True)
    (folder / "00000-5.png").write_bytes(b"theirs")
    real = outputs._next_number
    calls = iter([0])
    monkeypatch.setattr(outputs, "_next_number", lambda f: _stale(calls, real, f))
    path = save_image(_image(), tmp_path, "t", "", 7, now=NOW)
    assert path.name == "00001-7.png"
    assert sorted(p.name for p in folder.iterdir()) == ["00000-5.png", "00001-7.png"]


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(_image(), tmp_path, "t", INFOTEXT, 1, now=NOW)
    assert list((tmp_path / "t" / "2024-05-06").iterdir()) == []


def test_outputs_dir_as_string(tmp_path):
    path = save_image(_image(), str(tmp_path), "t", "", 1, now=NOW)
    assert isinstance(path, Path) and path.exists()
