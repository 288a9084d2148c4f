"""Datasets made from the browser (webui.training.datasets): safe uploads and every edit.

Every unsafe archive is refused as a whole, with a message, and nothing lands anywhere:
the test compares the whole tmp tree before and after. Stored datasets are read back
through the trainer's own loader (webui.training.dataset.load_dataset)."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.demo_model.shapes import ShapeSpec, render
from webui.training.dataset import load_dataset, open_rgb
from webui.training.datasets import DatasetError, DatasetStore, UploadLimits, validate_name


def png_bytes(colour=(200, 30, 30), size=(16, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files and folders), relative."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def write_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def symlink_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3  # Unix
    return info


def lying_size_zip(path: Path) -> Path:
    """A zip whose entry declares 10 bytes but holds a whole PNG (central directory patched)."""
    write_zip(path, [("a.png", png_bytes(size=(64, 64)))])
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # uncompressed size
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 10)
    path.write_bytes(bytes(data))
    return path


UNSAFE_ARCHIVES = {
    "absolute path": (lambda d: write_zip(d / "u.zip", [("ok.png", png_bytes()), ("/tmp/evil.png", png_bytes())]),
                      "absolute path"),
    "dot-dot": (lambda d: write_zip(d / "u.zip", [("ok.png", png_bytes()), ("../evil.png", png_bytes())]),
                "climbs out"),
    "nested dot-dot": (lambda d: write_zip(d / "u.zip", [("sub/../../evil.png", png_bytes())]), "climbs out"),
    "windows dot-dot": (lambda d: write_zip(d / "u.zip", [("..\\evil.png", png_bytes())]), "climbs out"),
    "windows drive": (lambda d: write_zip(d / "u.zip", [("C:/evil.png", png_bytes())]), "absolute path"),
    "symlink": (lambda d: write_zip(d / "u.zip", [("ok.png", png_bytes()),
                                                  (symlink_entry("link.png", "../../etc/passwd"), b"../../etc/passwd")]),
                "link"),
    "too many entries": (lambda d: write_zip(d / "u.zip", [(f"{i}.png", png_bytes()) for i in range(9)]),
                         "entries"),
    "zip bomb": (lambda d: write_zip(d / "u.zip", [("bomb.bmp", bytes(4 * 1024 * 1024))]), "zip bomb"),
    "declared total too large": (lambda d: write_zip(d / "u.zip", [(f"{i}.png", png_bytes(size=(256, 256)) + bytes(
        300_000)) for i in range(4)]), "more than"),
    "size lies": (lambda d: lying_size_zip(d / "u.zip"), "declared size"),
    "duplicate entry": (lambda d: write_zip(d / "u.zip", [("a.png", png_bytes()), ("A.PNG", png_bytes())]), "twice"),
}


@pytest.mark.parametrize("kind", list(UNSAFE_ARCHIVES))
def test_unsafe_archives_are_refused_and_write_nothing(tmp_path, kind):
    make, message = UNSAFE_ARCHIVES[kind]
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    archive = make(uploads)
    store = DatasetStore(tmp_path / "data" / "datasets",
                         UploadLimits(max_zip_entries=8, max_total_bytes=1_000_000, max_file_bytes=900_000))
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    before = tree(tmp_path)
    with pytest.raises(DatasetError, match=message):
        store.create("set", [archive])
    assert tree(tmp_path) == before  # no dataset, no staging folder, nothing beside or above
    assert not Path("/tmp/evil.png").exists()
    assert store.names() == []


def test_an_upload_over_the_limits_is_refused(tmp_path):
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        path.write_bytes(png_bytes())
        files.append(path)
    root = tmp_path / "datasets"
    with pytest.raises(DatasetError, match="more than the 2"):
        DatasetStore(root, UploadLimits(max_files=2)).create("a", files)
    with pytest.raises(DatasetError, match="one file may be at most"):
        DatasetStore(root, UploadLimits(max_file_bytes=10)).create("a", files)
    size = files[0].stat().st_size
    with pytest.raises(DatasetError, match="add up to more than"):
        DatasetStore(root, UploadLimits(max_total_bytes=2 * size + 1)).create("a", files)
    assert not root.exists() or DatasetStore(root).names() == []


@pytest.mark.parametrize("bad", ["", "  ", "../x", "a/b", "a\\b", ".hidden", "x" * 65, "a..b", "sp*cial"])
def test_unsafe_dataset_names_are_refused(bad):
    with pytest.raises(DatasetError):
        validate_name(bad)


def test_a_good_name_is_kept():
    assert validate_name(" my set_1 ") == "my set_1"


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x20 JPEG (left half red) whose EXIF orientation 6 says: rotate 90 degrees clockwise to view."""
    image = Image.new("RGB", (40, 20), (20, 20, 220))
    image.paste((220, 20, 20), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def test_uploaded_images_are_stored_as_the_trainer_reads_them(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "plain.png").write_bytes(png_bytes((10, 200, 10)))
    (uploads / "plain.txt").write_text("a green square", encoding="utf-8")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 8, 16))
    rgba.save(uploads / "alpha.png")
    Image.new("L", (16, 16), 128).save(uploads / "grey.png")
    exif_rotated_jpeg(uploads / "rotated.jpg")
    (uploads / "broken.png").write_bytes(png_bytes()[:40])  # a truncated PNG
    (uploads / "notes.pdf").write_bytes(b"%PDF-1.4")
    store = DatasetStore(tmp_path / "datasets")

    report = store.create("mixed", sorted(uploads.iterdir()))

    skipped = dict(report.skipped)
    assert set(skipped) == {"broken.png", "notes.pdf"}, report.skipped
    assert "not a readable image" in skipped["broken.png"]
    folder = store.folder("mixed")
    assert (folder / "plain.png").read_bytes() == (uploads / "plain.png").read_bytes()  # RGB kept byte for byte
    alpha = Image.open(folder / "alpha.png")
    assert alpha.mode == "RGB" and alpha.getpixel((12, 8)) == (255, 255, 255) and alpha.getpixel((2, 8)) == (255, 0, 0)
    assert Image.open(folder / "grey.png").mode == "RGB"
    assert not (folder / "rotated.jpg").exists()
    upright = Image.open(folder / "rotated.png")
    assert upright.size == (20, 40) and not upright.getexif().get(0x0112)  # stored upright, no rotation left
    red_top = np.asarray(upright)[:20].mean(axis=(0, 1))
    assert red_top[0] > 150 and red_top[2] < 80  # the red half is on top after the clockwise turn
    assert open_rgb(folder / "rotated.png").size == open_rgb(uploads / "rotated.jpg").size

    # the trainer reads what the store wrote (an image without a caption is an error for it: give each one)
    for item in store.images("mixed"):
        if not item.caption:
            store.set_caption("mixed", item.key, f"picture {item.key}")
    trained = load_dataset(folder)
    assert sorted(e.path.name for e in trained.examples) == ["alpha.png", "grey.png", "plain.png", "rotated.png"]
    assert {e.path.name: e.caption for e in trained.examples}["plain.png"] == "a green square"


def test_a_zip_with_a_top_folder_and_kohya_folders(tmp_path):
    archive = write_zip(tmp_path / "set.zip", [
        ("myset/", b""),
        ("myset/a.png", png_bytes()),
        ("myset/a.txt", b"a red square"),
        ("myset/10_sks dog/b.png", png_bytes((0, 0, 200))),
        ("myset/deep/er/c.png", png_bytes()),
        ("__MACOSX/myset/._a.png", b"junk"),
    ])
    store = DatasetStore(tmp_path / "datasets")
    report = store.create("dogs", [archive])
    assert sorted(report.added) == ["10_sks dog/b.png", "a.png", "a.txt"], report
    assert {label for label, _ in report.skipped} == {"myset/deep/er/c.png", "__MACOSX/myset/._a.png"}
    items = {item.key: item for item in store.images("dogs")}
    assert items["a.png"].caption == "a red square"
    assert items["10_sks dog/b.png"].caption == "" and items["10_sks dog/b.png"].effective_caption == "sks dog"
    trained = load_dataset(store.folder("dogs"))
    assert {e.path.name: (e.caption, e.repeats) for e in trained.examples} == {
        "a.png": ("a red square", 1), "b.png": ("sks dog", 10)}


def make_dataset(tmp_path: Path, count: int = 3) -> tuple[DatasetStore, str]:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    files = []
    for index in range(count):
        path = uploads / f"img{index}.png"
        render(ShapeSpec(shape="circle", colour="red", background="blue", size="large"), 64).save(path)
        files.append(path)
    (uploads / "img0.txt").write_text("a large red circle on a blue background", encoding="utf-8")
    store = DatasetStore(tmp_path / "datasets")
    store.create("shapes", files + [uploads / "img0.txt"])
    return store, "shapes"


def test_captions_set_delete_and_read_back(tmp_path):
    store, name = make_dataset(tmp_path)
    assert [i.caption for i in store.images(name)] == ["a large red circle on a blue background", "", ""]
    store.set_caption(name, "img1.png", "  a red\ncircle ")
    assert (store.folder(name) / "img1.txt").read_text(encoding="utf-8") == "a red circle"
    store.delete_image(name, "img0.png")
    assert not (store.folder(name) / "img0.png").exists() and not (store.folder(name) / "img0.txt").exists()
    assert [i.key for i in store.images(name)] == ["img1.png", "img2.png"]
    with pytest.raises(DatasetError):
        store.set_caption(name, "../outside.png", "x")
    with pytest.raises(DatasetError):
        store.delete_image(name, "img0.png")


def test_captions_in_metadata_jsonl_are_edited_there(tmp_path):
    archive = write_zip(tmp_path / "m.zip", [
        ("a.png", png_bytes()), ("b.png", png_bytes()),
        ("metadata.jsonl", b'{"file_name": "a.png", "text": "first"}\n{"file_name": "b.png", "caption": "second"}\n'),
    ])
    store = DatasetStore(tmp_path / "datasets")
    store.create("meta", [archive])
    store.set_caption("meta", "b.png", "changed")
    store.delete_image("meta", "a.png")
    assert not (store.folder("meta") / "b.txt").exists()
    assert {e.path.name: e.caption for e in load_dataset(store.folder("meta")).examples} == {"b.png": "changed"}


def test_trigger_word_front_and_back_is_never_doubled(tmp_path):
    store, name = make_dataset(tmp_path)
    store.set_caption(name, "img1.png", "a shape")
    assert store.add_trigger_word(name, "sks", "front") == 3
    assert [i.caption for i in store.images(name)] == [
        "sks, a large red circle on a blue background", "sks, a shape", "sks"]
    assert store.add_trigger_word(name, "SKS", "back") == 0  # already there, any case
    assert store.add_trigger_word(name, "style", "back") == 3
    assert store.images(name)[1].caption == "sks, a shape, style"
    store.set_caption(name, "img2.png", "asksb")  # "sks" inside another word does not count
    assert store.add_trigger_word(name, "sks", "front") == 1
    assert store.images(name)[2].caption == "sks, asksb"
    with pytest.raises(DatasetError):
        store.add_trigger_word(name, "a, b", "front")
    with pytest.raises(DatasetError):
        store.add_trigger_word(name, "x", "middle")


def test_rename_and_export_round_trip(tmp_path):
    store, name = make_dataset(tmp_path)
    assert store.rename(name, "renamed") == "renamed"
    assert store.names() == ["renamed"]
    with pytest.raises(DatasetError):
        store.rename("renamed", "../escape")
    exported = store.export_zip("renamed", tmp_path / "out" / "renamed.zip")
    with zipfile.ZipFile(exported) as archive:
        assert sorted(archive.namelist()) == ["img0.png", "img0.txt", "img1.png", "img2.png"]
    store.create("again", [exported])
    original = {i.key: (i.path.read_bytes(), i.caption) for i in store.images("renamed")}
    copy = {i.key: (i.path.read_bytes(), i.caption) for i in store.images("again")}
    assert copy == original
    with pytest.raises(DatasetError, match="already exists"):
        store.rename("again", "renamed")
    with pytest.raises(DatasetError, match="already exists"):
        store.create("again", [exported])
