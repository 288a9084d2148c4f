"""Training datasets made and edited from the browser, stored under ``<data-dir>/datasets/<name>/``.

A user with only a browser (Colab, a LAN box) creates a dataset by uploading image files or
one ``.zip``, then edits it: captions, deleting images, a trigger word on every caption,
renaming, downloading it as a ``.zip``. :class:`DatasetStore` does all of that on the folder
layout :mod:`webui.training.dataset` (the trainer) already reads:

* images with ``.txt`` caption sidecars at the top of the dataset folder;
* kohya ``<repeats>_<name>/`` subfolders (kept as they are when a zip holds them);
* a ``metadata.jsonl`` (captions are read and edited there when a file is listed in it).

Uploads are checked before anything lands in the datasets folder: file count, per-file and
total size (:class:`UploadLimits`), and for a ``.zip`` every entry's name and kind. An archive
with an absolute path, a ``..`` component, a link, too many entries, an encrypted entry, an
entry that expands far more than an image does (a zip bomb), or one that holds more than it
declares is refused as a whole with a :class:`DatasetError` saying why, and nothing is
written. Names are never used as paths directly: each is split into checked components and
the destination must resolve inside the new dataset's folder.

Every image is decoded with Pillow. One that cannot be decoded is skipped and named in the
report. Images are stored as the trainer sees them (:func:`webui.training.dataset.open_rgb`):
an RGB file with no EXIF rotation is kept byte for byte; an EXIF-rotated, transparent,
grayscale, palette or CMYK one is stored as an upright RGB PNG (alpha flattened onto white),
so the gallery shows exactly what the trainer trains on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, ContextManager, Iterable

from PIL import Image

from webui.training.dataset import IMAGE_SUFFIXES, KOHYA_FOLDER, open_rgb

CAPTION_SUFFIX = ".txt"
METADATA_FILE = "metadata.jsonl"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")
UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._ +-]")
STAGING_PREFIX = ".upload-"  # hidden: the dataset list leaves dot folders out
COPY_CHUNK = 1 << 20
#: Zip entries this small are not checked for their compression ratio (a caption of one repeated
#: character compresses 50x and harms nobody).
RATIO_CHECK_FROM_BYTES = 1 << 20


class DatasetError(ValueError):
    """An upload or an edit was refused; the message says why, in words for the user."""


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold. Every limit is checked before anything is written.

    ``max_compression_ratio`` applies to zip entries of at least 1 MiB: a PNG or JPEG barely
    compresses further (ratio about 1); an uncompressed BMP of a flat colour reaches ~100; a
    zip bomb reaches 1000 and more.
    """

    max_files: int = 2000
    max_file_bytes: int = 32 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    max_zip_entries: int = 4000
    max_compression_ratio: float = 150.0
    max_image_pixels: int = 50_000_000


@dataclass
class UploadReport:
    """What an upload did: the dataset's name, the files added and those skipped (name, reason)."""

    name: str
    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the user: counts, and each skipped file with the reason."""
        images = sum(1 for path in self.added if Path(path).suffix.lower() in IMAGE_SUFFIXES)
        line = f"Dataset `{self.name}`: {images} image(s) added"
        if self.skipped:
            line += "; skipped: " + "; ".join(f"{name} ({why})" for name, why in self.skipped)
        return line


@dataclass(frozen=True)
class DatasetImage:
    """One image of a dataset. ``key`` is its path inside the dataset folder ("a.png", "10_dog/b.png").

    ``caption`` is what is stored for it ("" when none); ``default_caption`` is what the trainer
    uses without one (the kohya folder's ``<name>``, else "").
    """

    key: str
    path: Path
    caption: str
    default_caption: str = ""

    @property
    def effective_caption(self) -> str:
        """The caption the trainer will use (stored, else the kohya folder's name)."""
        return self.caption or self.default_caption


def validate_name(name: str) -> str:
    """The dataset name, stripped, when it is a safe folder name; raises :class:`DatasetError` otherwise.

    Letters, digits, space, ``_ . + -``; 1-64 characters; starts with a letter or digit; no path
    separators, no ``..``.
    """
    cleaned = (name or "").strip()
    if not cleaned:
        raise DatasetError("Give the dataset a name")
    if "/" in cleaned or "\\" in cleaned or ".." in cleaned or not NAME_PATTERN.match(cleaned):
        raise DatasetError(f"Dataset name {cleaned!r} is not allowed: use letters, digits, spaces, '_', '-', '.', "
                           "'+' (up to 64 characters, starting with a letter or digit, no '/' or '..')")
    return cleaned


def safe_file_name(name: str) -> str:
    """A file name with only safe characters (others become ``_``), never hidden, never empty."""
    cleaned = UNSAFE_FILE_CHARACTERS.sub("_", name).strip(" .")
    return cleaned or "file"


def _is_link(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry is a symbolic link (Unix mode in the high 16 bits of its external attributes)."""
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode)


def _entry_parts(name: str) -> list[str]:
    """The checked path components of a zip entry name; raises DatasetError for an unsafe name."""
    if "\x00" in name:
        raise DatasetError(f"The archive holds an entry with a NUL byte in its name ({name!r}); refused")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise DatasetError(f"The archive holds an absolute path ({name!r}); refused, nothing was written")
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise DatasetError(f"The archive holds a path that climbs out of its folder ({name!r}); refused, "
                           "nothing was written")
    return parts


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@dataclass
class _Candidate:
    """One file of an upload on its way in: where it lands (relative parts) and how to read it."""

    parts: list[str]
    read: Callable[[], ContextManager[BinaryIO]]  # opens the file's bytes
    size: int
    label: str  # as the user named it (for messages)


class DatasetStore:
    """The datasets under one folder (``context.datasets_dir``): create, list, edit, export.

    Stateless apart from the folder: every method reads the disk, so several browser sessions
    and the trainer see the same thing. Names are validated with :func:`validate_name`; image
    keys (:attr:`DatasetImage.key`) must name an image of the dataset.
    """

    def __init__(self, root: str | os.PathLike, limits: UploadLimits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or UploadLimits()

    # ---- listing ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The dataset folders, sorted (hidden folders, such as uploads in progress, left out)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def folder(self, name: str) -> Path:
        """The folder of an existing dataset; raises DatasetError for an unknown or unsafe name."""
        name = validate_name(name)
        if name not in self.names():
            raise DatasetError(f"There is no dataset {name!r}")
        return self.root / name

    def images(self, name: str) -> list[DatasetImage]:
        """The dataset's images with their captions, in the trainer's order (top level, then kohya folders)."""
        root = self.folder(name)
        found: list[DatasetImage] = []
        for sub, default in self._image_folders(root):
            captions = _read_metadata(sub)
            for path in sorted(sub.iterdir()):
                if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                caption = captions.get(path.name)
                if caption is None:
                    sidecar = path.with_suffix(CAPTION_SUFFIX)
                    caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
                found.append(DatasetImage(key=path.relative_to(root).as_posix(), path=path, caption=caption,
                                          default_caption=default))
        return found

    @staticmethod
    def _image_folders(root: Path) -> list[tuple[Path, str]]:
        """The folders the trainer reads: the dataset folder, then its kohya subfolders (with their names)."""
        folders = [(root, "")]
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            match = KOHYA_FOLDER.match(sub.name)
            if match:
                folders.append((sub, match.group(2)))
        return folders

    def image(self, name: str, key: str) -> DatasetImage:
        """One image of the dataset by its key; raises DatasetError when it is not one of them."""
        for item in self.images(name):
            if item.key == key:
                return item
        raise DatasetError(f"Dataset {name!r} has no image {key!r}")

    # ---- creating ----------------------------------------------------------------------------

    def create(self, name: str, files: Iterable[str | os.PathLike], original_names: Iterable[str] | None = None,
               ) -> UploadReport:
        """Create dataset ``name`` from uploaded files: images (with ``.txt`` captions beside them) or one ``.zip``.

        ``files`` are paths on the server (Gradio's upload copies); ``original_names`` the names
        the user's files had, when those differ from the paths' names. Refuses (DatasetError,
        nothing written) when the name is taken or unsafe, the limits are exceeded, or a zip is
        unsafe. Images that do not decode are skipped and listed in the report; when none is
        left the dataset is not created.
        """
        name = validate_name(name)
        if (self.root / name).exists():
            raise DatasetError(f"A dataset named {name!r} already exists; pick another name")
        paths = [Path(f) for f in files]
        labels = list(original_names) if original_names is not None else [p.name for p in paths]
        if not paths:
            raise DatasetError("Choose image files or one .zip to upload")
        zips = [p for p, label in zip(paths, labels) if label.lower().endswith(".zip")]
        if zips and len(paths) > 1:
            raise DatasetError("Upload either image files or one .zip, not both")
        candidates = self._zip_candidates(paths[0]) if zips else self._file_candidates(paths, labels)
        return self._write(name, candidates)

    def _file_candidates(self, paths: list[Path], labels: list[str]) -> list[_Candidate]:
        limits = self.limits
        if len(paths) > limits.max_files:
            raise DatasetError(f"{len(paths)} files is more than the {limits.max_files} one upload may hold")
        candidates, total = [], 0
        for path, label in zip(paths, labels):
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                raise DatasetError(f"{label} is {_mib(size)}; one file may be at most {_mib(limits.max_file_bytes)}")
            total += size
            if total > limits.max_total_bytes:
                raise DatasetError(f"The files add up to more than {_mib(limits.max_total_bytes)}, the most one "
                                   "upload may hold")
            base = PurePosixPath(label.replace("\\", "/")).name  # a browser sends a bare name; never trust a path
            candidates.append(_Candidate(parts=[base], read=lambda path=path: open(path, "rb"), size=size,
                                         label=label))
        return candidates

    def _zip_candidates(self, path: Path) -> list[_Candidate]:
        """Check the whole archive first; any unsafe entry refuses it (DatasetError) before a byte is written."""
        limits = self.limits
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{path.name} is not a readable .zip ({exc})") from None
        with archive:
            infos = archive.infolist()
        if len(infos) > limits.max_zip_entries:
            raise DatasetError(f"The archive holds {len(infos)} entries, more than the {limits.max_zip_entries} "
                               "allowed; refused, nothing was written")
        files: list[tuple[zipfile.ZipInfo, list[str]]] = []
        declared_total = 0
        seen: set[str] = set()
        for info in infos:
            parts = _entry_parts(info.filename)
            if _is_link(info):
                raise DatasetError(f"The archive holds a link ({info.filename!r}); links are refused, nothing was "
                                   "written")
            if info.flag_bits & 0x1:
                raise DatasetError(f"The archive holds an encrypted entry ({info.filename!r}); refused")
            if info.is_dir() or not parts:
                continue
            key = "/".join(parts).lower()
            if key in seen:
                raise DatasetError(f"The archive holds {info.filename!r} twice; refused, nothing was written")
            seen.add(key)
            if info.file_size >= RATIO_CHECK_FROM_BYTES and (
                    info.compress_size == 0 or info.file_size / info.compress_size > limits.max_compression_ratio):
                ratio = info.file_size / max(info.compress_size, 1)
                raise DatasetError(f"{info.filename} expands {ratio:.0f}x (more than "
                                   f"{limits.max_compression_ratio:.0f}x): this looks like a zip bomb. Refused, "
                                   "nothing was written")
            if info.file_size > limits.max_file_bytes:
                raise DatasetError(f"{info.filename} expands to {_mib(info.file_size)}; one file may be at most "
                                   f"{_mib(limits.max_file_bytes)}. Refused, nothing was written")
            declared_total += info.file_size
            if declared_total > limits.max_total_bytes:
                raise DatasetError(f"The archive expands to more than {_mib(limits.max_total_bytes)}, the most one "
                                   "upload may hold. Refused, nothing was written")
            files.append((info, parts))
        if len(files) > limits.max_files:
            raise DatasetError(f"The archive holds {len(files)} files, more than the {limits.max_files} one upload "
                               "may hold; refused")
        files = _strip_common_folder(files)

        def opener(info: zipfile.ZipInfo):
            @contextmanager
            def open_entry():
                with zipfile.ZipFile(path) as handle, handle.open(info) as entry:
                    yield entry
            return open_entry

        return [_Candidate(parts=parts, read=opener(info), size=info.file_size, label=info.filename)
                for info, parts in files]

    def _write(self, name: str, candidates: list[_Candidate]) -> UploadReport:
        """Copy the candidates into a hidden staging folder, check each, then move it to ``<root>/<name>``."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        report = UploadReport(name=name)
        try:
            written_total = 0
            for candidate in candidates:
                where, why = self._placement(candidate.parts)
                if where is None:
                    report.skipped.append((candidate.label, why))
                    continue
                destination = staging.joinpath(*where)
                if not _inside(destination, staging):  # belt and braces: the parts were checked already
                    raise DatasetError(f"{candidate.label!r} would land outside the dataset; refused")
                destination = _unused(destination)
                destination.parent.mkdir(parents=True, exist_ok=True)
                written_total += self._copy_capped(candidate, destination, self.limits.max_total_bytes - written_total)
                if destination.suffix.lower() in IMAGE_SUFFIXES:
                    problem = self._store_image(destination)
                    if problem:
                        report.skipped.append((candidate.label, problem))
                        continue
                report.added.append(destination.relative_to(staging).as_posix())
            if not any(Path(p).suffix.lower() in IMAGE_SUFFIXES for p in report.added):
                reasons = "; ".join(f"{label} ({why})" for label, why in report.skipped) or "the upload was empty"
                raise DatasetError(f"No usable image in the upload: {reasons}")
            final = self.root / name
            if final.exists():
                raise DatasetError(f"A dataset named {name!r} already exists; pick another name")
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return report

    @staticmethod
    def _placement(parts: list[str]) -> tuple[list[str] | None, str]:
        """Where an uploaded file goes inside the dataset (safe parts), or (None, why it is skipped)."""
        if _is_system(parts):
            return None, "hidden or system file"
        if len(parts) > 2 or (len(parts) == 2 and not KOHYA_FOLDER.match(parts[0])):
            return None, ("the trainer reads only the top folder and kohya <repeats>_<name>/ folders; "
                          "put images at the top or in such a folder")
        file_name = parts[-1]
        suffix = Path(file_name).suffix.lower()
        if file_name.lower() != METADATA_FILE and suffix not in IMAGE_SUFFIXES and suffix != CAPTION_SUFFIX:
            return None, "not an image, a .txt caption or metadata.jsonl"
        safe = [safe_file_name(part) for part in parts[:-1]] + [safe_file_name(file_name)]
        if len(safe) == 2 and not KOHYA_FOLDER.match(safe[0]):
            return None, "folder name not usable"
        return safe, ""

    def _copy_capped(self, candidate: _Candidate, destination: Path, budget: int) -> int:
        """Copy one file, stopping with DatasetError when it holds more than declared or than the budget."""
        cap = min(self.limits.max_file_bytes, budget)
        written = 0
        with candidate.read() as source, open(destination, "wb") as target:
            while True:
                try:
                    chunk = source.read(COPY_CHUNK)
                except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # bad CRC: sizes or data lied
                    raise DatasetError(f"{candidate.label} is damaged or does not match its declared size ({exc}); "
                                       "refused, nothing was written") from None
                if not chunk:
                    break
                written += len(chunk)
                if written > cap or written > candidate.size:
                    raise DatasetError(f"{candidate.label} holds more data than it declares or than the upload may "
                                       "hold; refused, nothing was written")
                target.write(chunk)
        return written

    def _store_image(self, path: Path) -> str:
        """Decode an image; store it as the trainer sees it. Returns why it was skipped ("" when kept)."""
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > self.limits.max_image_pixels:
                    raise DatasetError(f"{width}x{height} is more than {self.limits.max_image_pixels} pixels")
                image.verify()
            with Image.open(path) as image:  # verify() leaves the file unusable: open it again
                needs_conversion = image.mode != "RGB" or image.getexif().get(0x0112, 1) not in (1, None) \
                    or getattr(image, "n_frames", 1) > 1
            upright = open_rgb(path)  # full decode: verify() misses truncated data
        except Exception as exc:  # noqa: BLE001 - any undecodable file is skipped, with the reason
            path.unlink(missing_ok=True)
            return f"not a readable image: {type(exc).__name__}: {exc}"
        if needs_conversion:
            converted = _unused(path.with_suffix(".png")) if path.suffix.lower() != ".png" else path
            upright.save(converted, format="PNG")
            if converted != path:
                path.unlink()
                sidecar = path.with_suffix(CAPTION_SUFFIX)  # a caption named after the old file follows it
                if sidecar.is_file() and converted.with_suffix(CAPTION_SUFFIX) != sidecar:
                    sidecar.rename(_unused(converted.with_suffix(CAPTION_SUFFIX)))
        return ""

    # ---- editing -----------------------------------------------------------------------------

    def set_caption(self, name: str, key: str, caption: str) -> DatasetImage:
        """Store ``caption`` for one image (its ``metadata.jsonl`` row when it has one, else its ``.txt``)."""
        self.set_captions(name, {key: caption})
        return self.image(name, key)

    def set_captions(self, name: str, captions: dict[str, str]) -> None:
        """Store several captions (``key -> caption``) with one listing of the dataset.

        Each caption is made one line (the trainer reads the whole file as the caption). An
        unknown key refuses the whole call before anything is written.
        """
        items = {item.key: item for item in self.images(name)}
        unknown = [key for key in captions if key not in items]
        if unknown:
            raise DatasetError(f"Dataset {name!r} has no image {unknown[0]!r}")
        metadata_changes: dict[Path, dict[str, str | None]] = {}
        metadata_names: dict[Path, dict[str, str]] = {}
        for key, caption in captions.items():
            item = items[key]
            text = " ".join((caption or "").split())
            folder = item.path.parent
            if folder not in metadata_names:
                metadata_names[folder] = _read_metadata(folder)
            if item.path.name in metadata_names[folder]:
                metadata_changes.setdefault(folder / METADATA_FILE, {})[item.path.name] = text
            else:
                item.path.with_suffix(CAPTION_SUFFIX).write_text(text, encoding="utf-8")
        for meta, changes in metadata_changes.items():
            _rewrite_metadata(meta, changes)

    def delete_image(self, name: str, key: str) -> None:
        """Delete one image, its caption file and its ``metadata.jsonl`` row."""
        item = self.image(name, key)
        meta = item.path.parent / METADATA_FILE
        if item.path.name in _read_metadata(item.path.parent):
            _rewrite_metadata(meta, {item.path.name: None})
        item.path.with_suffix(CAPTION_SUFFIX).unlink(missing_ok=True)
        item.path.unlink()

    def add_trigger_word(self, name: str, word: str, position: str = "front") -> int:
        """Put ``word`` at the ``front`` or ``back`` of every caption that does not hold it yet; returns how many changed.

        Captions are comma-separated tags or sentences; the word is joined with ", ". A caption
        that already holds the word (as a whole word, any case) is left alone, so pressing it
        twice changes nothing. An image without a caption gets the word plus its kohya default.
        """
        word = " ".join((word or "").split())
        if not word or "," in word:
            raise DatasetError("Type one trigger word or phrase (no commas)")
        if position not in ("front", "back"):
            raise DatasetError(f"Position must be 'front' or 'back', not {position!r}")
        pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
        changes = {}
        for item in self.images(name):
            current = item.effective_caption
            if not pattern.search(current):
                parts = [word, current] if position == "front" else [current, word]
                changes[item.key] = ", ".join(part for part in parts if part)
        self.set_captions(name, changes)
        return len(changes)

    def rename(self, name: str, new_name: str) -> str:
        """Rename a dataset folder; returns the new (validated) name."""
        source = self.folder(name)
        new_name = validate_name(new_name)
        if new_name == source.name:
            return new_name
        target = self.root / new_name
        if target.exists():
            raise DatasetError(f"A dataset named {new_name!r} already exists")
        source.rename(target)
        return new_name

    def export_zip(self, name: str, destination: str | os.PathLike) -> Path:
        """Write the whole dataset (images, captions, kohya folders, metadata) as a ``.zip``; returns its path.

        The archive holds the dataset's files relative to its folder, so uploading it again
        creates the same dataset.
        """
        root = self.folder(name)
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    archive.write(path, path.relative_to(root).as_posix())
        return destination


def _is_system(parts: list[str]) -> bool:
    """Hidden files and macOS's ``__MACOSX`` resource forks: never part of a dataset."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _strip_common_folder(files: list[tuple[zipfile.ZipInfo, list[str]]]) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Drop one folder every entry sits in ("myset/a.png" -> "a.png"), unless it is a kohya folder.

    Hidden and ``__MACOSX`` entries do not count (they are skipped later anyway).
    """
    relevant = [parts for _, parts in files if not _is_system(parts)]
    if not relevant or any(len(parts) < 2 for parts in relevant):
        return files
    first = relevant[0][0]
    if KOHYA_FOLDER.match(first) or any(parts[0] != first for parts in relevant):
        return files
    return [(info, parts if _is_system(parts) else parts[1:]) for info, parts in files]


def _unused(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ... when it exists already."""
    if not path.exists():
        return path
    for index in range(2, 100_000):
        candidate = path.with_name(f"{path.stem}-{index}{path.suffix}")
        if not candidate.exists():
            return candidate
    return path.with_name(f"{path.stem}-{uuid.uuid4().hex}{path.suffix}")


def _read_metadata(folder: Path) -> dict[str, str]:
    """``file_name -> caption`` from a folder's ``metadata.jsonl`` (as the trainer reads it)."""
    meta = folder / METADATA_FILE
    captions: dict[str, str] = {}
    if not meta.is_file():
        return captions
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("file_name"), str):
            text = row.get("text", row.get("caption"))
            if isinstance(text, str):
                captions[row["file_name"]] = text.strip()
    return captions


def _rewrite_metadata(meta: Path, changes: dict[str, str | None]) -> None:
    """Set (or, with None, drop) the caption rows of ``changes`` in ``metadata.jsonl``; other lines stay."""
    lines = []
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        name = row.get("file_name") if isinstance(row, dict) else None
        if name in changes:
            if changes[name] is None:
                continue
            row.pop("caption", None)
            row["text"] = changes[name]
            line = json.dumps(row, ensure_ascii=False)
        lines.append(line)
    meta.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"
