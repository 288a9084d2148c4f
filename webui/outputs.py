"""Saving generated images, A1111 style, with their infotext.

Images go to ``<outputs_dir>/<task>/<YYYY-MM-DD>/NNNNN-<seed>.png`` (``00000-1234.png``,
``00001-1234.png``, ...), the numbering AUTOMATIC1111 uses: one more than the highest
number already in the folder.  The generation parameters (see :mod:`webui.infotext`) are
stored in the PNG ``parameters`` text chunk, which A1111's "PNG Info" tab and civitai read.
"""

from __future__ import annotations

import io
import os
import re
import threading
from datetime import datetime
from pathlib import Path

from PIL import Image, PngImagePlugin

__all__ = ["save_image", "read_infotext", "read_image_text", "INFOTEXT_KEY", "EXIF_USER_COMMENT_KEY"]

INFOTEXT_KEY = "parameters"
EXIF_USER_COMMENT_KEY = "EXIF UserComment"

_TASK_RE = re.compile(r"[A-Za-z0-9_-]+")
# Names Windows refuses as folder names.
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_NUMBERED_RE = re.compile(r"^(\d+)-")
_PNG_MODES = {"RGB", "RGBA", "L", "LA"}
_MAX_ATTEMPTS = 1000
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286

# Serialises "find the next number + create the file" between threads of this process.
# Between processes, exclusive creation plus the duplicate-number check below keep names
# unique.
_number_lock = threading.Lock()


def _prepare_image(image: Image.Image) -> Image.Image:
    """Return ``image`` in a mode that PNG stores losslessly and every viewer shows."""
    if image.mode in _PNG_MODES:
        return image
    if image.mode == "P":
        has_alpha = "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA"
        return image.convert("RGBA" if has_alpha else "RGB")
    if image.mode == "PA":
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit greyscale ("I;16*", and "I" holding values above 255, as 16-bit PNGs open) is
        # scaled from 0..65535 to 8 bits; float images are taken as 0..1 when they fit, else
        # as 0..255.
        import numpy as np

        data = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and data.size and data.max() > 255):
            data = data / 257.0
        elif data.size and np.nanmax(data) <= 1.0:
            data = data * 255.0
        data = np.nan_to_num(data, nan=0.0)
        return Image.fromarray(np.clip(data, 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBa", "La"):
        return image.convert(image.mode.upper())
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def _next_number(folder: Path) -> int:
    highest = -1
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _NUMBERED_RE.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def _others_with_number(folder: Path, number: int, own_name: str) -> bool:
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _NUMBERED_RE.match(entry.name)
            if match and int(match.group(1)) == number and entry.name != own_name:
                return True
    return False


def _reserve_path(folder: Path, seed: int) -> tuple[Path, int]:
    """Create an empty ``NNNNN-<seed>.png`` with a number no other file in ``folder`` has.

    Returns the path and an open file descriptor (opened with ``O_EXCL``).
    """
    for _ in range(_MAX_ATTEMPTS):
        with _number_lock:
            number = _next_number(folder)
            path = folder / f"{number:05d}-{seed}.png"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            except FileExistsError:
                continue
        # Another process may have taken the same number with a different seed (a different
        # file name) at the same moment.  The one that sees the other backs off; at most one
        # of two such files can survive this check, so numbers stay unique.
        if _others_with_number(folder, number, path.name):
            os.close(fd)
            path.unlink(missing_ok=True)
            continue
        return path, fd
    raise RuntimeError(f"could not find a free file name in {folder} after {_MAX_ATTEMPTS} attempts")


def encode_png(image: Image.Image, infotext: str = "") -> bytes:
    """``image`` as PNG bytes with ``infotext`` in its ``parameters`` text chunk (as :func:`save_image` writes it).

    Modes are converted as :func:`save_image` describes; nothing is stored when ``infotext`` is empty.
    """
    pnginfo = PngImagePlugin.PngInfo()
    if infotext:
        # Latin-1 text goes into tEXt; anything else into an (uncompressed) iTXt chunk, which
        # Pillow, A1111 and browsers read the same way.
        pnginfo.add_text(INFOTEXT_KEY, infotext)
    buffer = io.BytesIO()
    _prepare_image(image).save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


def save_image(
    image: Image.Image,
    outputs_dir: Path,
    task: str,
    infotext: str,
    seed: int,
    now: datetime | None = None,
) -> Path:
    """Save ``image`` as a PNG with its infotext and return the path of the new file.

    The file is ``outputs_dir/<task>/<YYYY-MM-DD>/NNNNN-<seed>.png``: folders are created as
    needed and ``NNNNN`` is one more than the highest number already in the day's folder
    (``00000`` in a new one).  Names are taken with exclusive creation, so threads or
    processes saving at the same moment never overwrite each other's files nor share a
    number.

    Args:
        image: the image.  RGB, RGBA, L and LA are stored as they are; palette images
            become RGB (RGBA when they have transparency), 1-bit become L, 16-bit and
            float greyscale are scaled to 8-bit L, anything else (CMYK, YCbCr, ...) becomes RGB.
        outputs_dir: root folder of all outputs.
        task: sub-folder for the kind of job, e.g. ``"txt2img"``; only letters, digits,
            ``-`` and ``_`` (and not a name Windows reserves, such as ``CON``).
        infotext: generation parameters (see :func:`webui.infotext.build_infotext`),
            stored in the ``parameters`` text chunk; nothing is stored when empty.
        seed: the image's seed, used in the file name.
        now: the time used for the date folder; defaults to the local time now.

    Returns:
        Path of the saved file.

    Raises:
        ValueError: ``task`` is not a simple name (this also rules out path traversal).
    """
    if not isinstance(task, str) or not _TASK_RE.fullmatch(task) or task.upper() in _RESERVED:
        raise ValueError(f"task must be a simple name of letters, digits, '-' and '_', got {task!r}")
    seed = int(seed)
    now = now or datetime.now()
    folder = Path(outputs_dir) / task / now.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)

    data = encode_png(image, infotext)
    path, fd = _reserve_path(folder, seed)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _decode(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _from_exif(image: Image.Image) -> str | None:
    """Infotext from the EXIF UserComment, where A1111 puts it in JPEG and WebP files."""
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    except Exception:
        return None
    if comment is None:
        return None
    if isinstance(comment, str):
        return comment or None
    data = bytes(comment)
    header, body = data[:8], data[8:]
    if header == b"UNICODE\0":
        # piexif (used by A1111) writes big-endian UTF-16; detect little-endian by the BOM or
        # by NUL bytes in the odd positions of ASCII text.
        if body[:2] == b"\xff\xfe" or (len(body) >= 2 and body[0] != 0 and body[1] == 0):
            text = body.decode("utf-16-le", errors="replace")
        else:
            text = body.decode("utf-16-be", errors="replace")
        text = text.lstrip("\ufeff")
    elif header in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("latin-1" if header.startswith(b"ASCII") else "utf-8", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    text = text.rstrip("\0")
    return text or None


def _read_from_image(image: Image.Image) -> str | None:
    text = _decode(image.info.get(INFOTEXT_KEY))
    if text is None:
        # Text chunks after the image data are only known once the image is loaded.
        chunks = getattr(image, "text", None)
        if isinstance(chunks, dict):
            text = _decode(chunks.get(INFOTEXT_KEY))
    if text is None:
        text = _from_exif(image)
    return text


def read_infotext(path_or_image: str | os.PathLike | Image.Image) -> str | None:
    """Return the infotext stored in an image, or ``None`` when it has none.

    Reads the ``parameters`` text chunk of a PNG (tEXt, zTXt or iTXt, before or after the
    image data), also any ``parameters`` entry in an already opened image's ``.info``, and
    falls back to the EXIF UserComment where A1111 stores it in JPEG and WebP files.

    Args:
        path_or_image: a file path, or an opened :class:`PIL.Image.Image`.

    Raises:
        FileNotFoundError, PIL.UnidentifiedImageError: the path is missing or not an image.
    """
    if isinstance(path_or_image, Image.Image):
        return _read_from_image(path_or_image)
    with Image.open(path_or_image) as image:
        return _read_from_image(image)


def read_image_text(image: Image.Image) -> dict[str, str]:
    """Every text an opened image carries, by name: PNG text chunks (tEXt, zTXt, iTXt, also
    those after the image data), other string entries of ``image.info`` (a JPEG or GIF
    ``comment``, ...) and the EXIF UserComment (``"EXIF UserComment"``, where A1111 stores the
    infotext of JPEG and WebP files). Binary entries (ICC profiles, raw EXIF) are left out."""
    texts: dict[str, str] = {}
    chunks = getattr(image, "text", None)  # PNG: loads the chunks after the image data too
    for source in (chunks if isinstance(chunks, dict) else {}, image.info):
        for key, value in source.items():
            if key in texts or key in ("exif", "icc_profile", "xmp"):
                continue
            if isinstance(value, str):
                texts[str(key)] = value
            elif isinstance(value, bytes) and key in ("comment", INFOTEXT_KEY):
                texts[str(key)] = value.decode("utf-8", errors="replace")
    comment = _from_exif(image)
    if comment and comment != texts.get(INFOTEXT_KEY):
        texts[EXIF_USER_COMMENT_KEY] = comment
    return texts
