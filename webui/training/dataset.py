"""Training images and captions from a folder.

Three layouts, detected per folder:

* images with caption sidecars (``cat1.png`` + ``cat1.txt``);
* a ``metadata.jsonl`` with ``{"file_name": ..., "text": ...}`` lines (the 🤗 ``imagefolder``
  convention; ``caption`` is accepted for ``text``);
* kohya's ``<repeats>_<name>`` subfolders (``10_sks dog/``): every image there counts
  ``repeats`` times, and ``<name>`` is the caption of images without one.

Images are EXIF-transposed, alpha is flattened onto white, grayscale/palette/CMYK are
converted to RGB. A file that cannot be read is listed in :attr:`Dataset.skipped` with the
reason and left out; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass
class Example:
    path: Path
    caption: str
    repeats: int = 1
    size: tuple[int, int] | None = None  # (width, height), upright


@dataclass
class Dataset:
    examples: list[Example]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def expanded(self) -> list[int]:
        """Example indices with kohya repeats applied (one epoch)."""
        return [i for i, example in enumerate(self.examples) for _ in range(max(1, example.repeats))]

    def fingerprint(self) -> str:
        """SHA-256 over every used file's bytes and caption (recorded in the LoRA's metadata)."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example.path.name.encode())
            digest.update(hashlib.sha256(example.path.read_bytes()).digest())
            digest.update(example.caption.encode())
            digest.update(str(example.repeats).encode())
        return digest.hexdigest()


def open_rgb(path: Path) -> Image.Image:
    """Open an image as upright RGB: EXIF orientation applied, alpha flattened onto white."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return image.convert("RGB")


def _read_caption(path: Path, extension: str) -> str | None:
    sidecar = path.with_suffix(extension)
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8", errors="replace").strip()
    return None


def _metadata(folder: Path) -> dict[str, str]:
    meta = folder / "metadata.jsonl"
    captions: dict[str, str] = {}
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            name = row.get("file_name")
            text = row.get("text", row.get("caption"))
            if isinstance(name, str) and isinstance(text, str):
                captions[name] = text.strip()
    return captions


def _collect(folder: Path, repeats: int, default_caption: str, caption_extension: str, use_captions: bool,
             instance_prompt: str, dataset: Dataset) -> None:
    captions = _metadata(folder)
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as image:
                image.verify()
            size = open_rgb(path).size  # verify() misses truncated data; decode once to be sure
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, by name
            dataset.skipped.append((str(path.relative_to(dataset.root)), f"{type(exc).__name__}: {exc}"))
            continue
        caption = None
        if use_captions:
            caption = captions.get(path.name)
            if caption is None:
                caption = _read_caption(path, caption_extension)
        if not caption:
            caption = instance_prompt or default_caption
        if instance_prompt and use_captions and caption != instance_prompt and instance_prompt not in caption:
            caption = f"{instance_prompt}, {caption}"
        dataset.examples.append(Example(path=path, caption=caption, repeats=repeats, size=size))


def load_dataset(folder: str | Path, caption_extension: str = ".txt", use_captions: bool = True,
                 instance_prompt: str = "") -> Dataset:
    """Scan ``folder`` (see the module docstring). Raises ValueError when nothing usable is found."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"Dataset folder {root} does not exist")
    dataset = Dataset(examples=[], root=root)
    _collect(root, 1, "", caption_extension, use_captions, instance_prompt, dataset)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = KOHYA_FOLDER.match(sub.name)
        if match:
            _collect(sub, int(match.group(1)), match.group(2), caption_extension, use_captions, instance_prompt,
                     dataset)
    if not dataset.examples:
        skipped = "; ".join(f"{name} ({why})" for name, why in dataset.skipped)
        raise ValueError(f"No usable images in {root}" + (f"; skipped: {skipped}" if skipped else ""))
    missing = [e.path.name for e in dataset.examples if not e.caption]
    if missing:
        raise ValueError(f"No caption and no instance prompt for: {', '.join(missing[:10])}")
    return dataset


def make_buckets(resolution: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """Aspect-ratio buckets ``(width, height)`` of about ``resolution**2`` pixels, sides in steps of
    64 (8 below 256 px), aspect ratios up to ``max_ratio``; the square is always one of them."""
    step = 64 if resolution >= 256 else 8
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    width = step
    while width <= resolution * max_ratio:
        height = (area // width) // step * step
        if height >= step and max(width / height, height / width) <= max_ratio:
            buckets.add((width, height))
        width += step
    return sorted(buckets)


def nearest_bucket(size: tuple[int, int] | None, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``size`` (width, height)."""
    if size is None:
        return min(buckets, key=lambda b: abs(math.log(b[0] / b[1])))
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def image_tensor(image: Image.Image, resolution: int, center_crop: bool, flip: bool,
                 crop_generator: torch.Generator | None = None, size: tuple[int, int] | None = None,
                 ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Resize to cover the target (``size`` = (width, height), else a ``resolution`` square), crop
    to it, maybe flip; returns (CHW in [-1, 1], original size (h, w), crop top-left (top, left)) --
    the last two are SDXL's size conditioning."""
    target_w, target_h = size or (resolution, resolution)
    original = (image.height, image.width)
    scale = max(target_w / image.width, target_h / image.height)
    width, height = max(target_w, round(image.width * scale)), max(target_h, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    if center_crop or crop_generator is None:
        top, left = (height - target_h) // 2, (width - target_w) // 2
    else:
        top = int(torch.randint(0, height - target_h + 1, (1,), generator=crop_generator))
        left = int(torch.randint(0, width - target_w + 1, (1,), generator=crop_generator))
    image = image.crop((left, top, left + target_w, top + target_h))
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), original, (top, left)
