"""Mask tools and image input normalisation for background replacement (numpy, Pillow, scipy).

A *mask* here is a 2-D ``bool`` numpy array, ``True`` on the subject (the part to keep).
Every tool returns a new array and never changes its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps


def _ndimage():
    """scipy.ndimage, imported on first use (it takes about a second; the UI is served before)."""
    from scipy import ndimage

    return ndimage


__all__ = [
    "PreparedImage", "prepare_image", "to_model_size", "grow", "feather", "invert", "keep_largest",
    "fill_holes", "overlay", "mask_to_image", "image_to_mask", "boxes_to_mask", "apply_mask_tools",
]

DEFAULT_MODEL_SIDE = 1024


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate (``pixels`` > 0) or erode (``pixels`` < 0) the mask by a disc of that radius.

    Erosion treats the outside of the image as background, so a subject touching the border
    also shrinks from it.
    """
    mask = np.asarray(mask, dtype=bool)
    pixels = int(pixels)
    if pixels == 0 or not mask.any():
        return mask.copy()
    radius = abs(pixels)
    # Distance transforms are exact Euclidean and cost the same for any radius.
    if pixels > 0:
        distance = _ndimage().distance_transform_edt(~mask)
        return distance <= radius
    padded = np.pad(mask, 1, constant_values=False)
    distance = _ndimage().distance_transform_edt(padded)[1:-1, 1:-1]
    return distance > radius


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """A soft ``float32`` alpha in 0..1: the mask blurred with a Gaussian of sigma ``radius / 2``.

    ``radius`` 0 returns the hard mask as floats.
    """
    alpha = np.asarray(mask, dtype=np.float32)
    if radius <= 0:
        return alpha.copy()
    return np.clip(_ndimage().gaussian_filter(alpha, sigma=float(radius) / 2.0, mode="nearest"), 0.0, 1.0)


def invert(mask: np.ndarray) -> np.ndarray:
    """Swap subject and background."""
    return ~np.asarray(mask, dtype=bool)


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected region of the mask (empty stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    labels, count = _ndimage().label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of the subject."""
    return _ndimage().binary_fill_holes(np.asarray(mask, dtype=bool))


def boxes_to_mask(boxes: list[tuple[float, float, float, float]], size: tuple[int, int]) -> np.ndarray:
    """A mask that is ``True`` inside any of the ``(x0, y0, x1, y1)`` boxes; ``size`` is ``(width, height)``."""
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        left, top = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        right, bottom = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        mask[top:bottom, left:right] = True
    return mask


def apply_mask_tools(mask: np.ndarray, grow_pixels: int = 0, largest: bool = False, holes: bool = False,
                     inverted: bool = False) -> np.ndarray:
    """The tab's mask tool chain, in a fixed order: keep largest, fill holes, grow/shrink, invert."""
    mask = np.asarray(mask, dtype=bool)
    if largest:
        mask = keep_largest(mask)
    if holes:
        mask = fill_holes(mask)
    if grow_pixels:
        mask = grow(mask, grow_pixels)
    if inverted:
        mask = invert(mask)
    return mask


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """White subject on black, mode ``L`` (what the download and the editor show)."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L")


def image_to_mask(image: Image.Image | np.ndarray, threshold: int = 128) -> np.ndarray:
    """A mask from a picture of one: white/bright = subject; an RGBA layer counts where it is opaque and bright."""
    if isinstance(image, np.ndarray):
        data = image
        if data.ndim == 3 and data.shape[2] == 4:
            return (data[..., 3] >= threshold) & (data[..., :3].max(axis=2) >= threshold)
        if data.ndim == 3:
            data = data[..., :3].max(axis=2)
        if data.dtype == bool:
            return data.copy()
        return data >= threshold
    if image.mode in ("RGBA", "LA", "PA"):
        return image_to_mask(np.asarray(image.convert("RGBA")), threshold)
    return np.asarray(image.convert("L")) >= threshold


def overlay(image: Image.Image, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 80),
            opacity: float = 0.5) -> Image.Image:
    """A preview: the background tinted with ``color`` and the subject outline drawn, RGB."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != base.shape[:2]:
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    tint = np.array(color, dtype=np.float32)
    out = base.copy()
    out[~mask] = base[~mask] * (1 - opacity) + tint * opacity
    edge = mask & ~grow(mask, -1) if mask.any() else mask
    out[edge] = tint
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------------
# Input images
# ------------------------------------------------------------------------------------------


@dataclass
class PreparedImage:
    """An uploaded image made ready for the models.

    ``image`` is RGB at the (EXIF-corrected) input size, ``alpha_hint`` the input's alpha as
    a mask where it had a meaningful one (some pixels transparent), ``notes`` what was done.
    """

    image: Image.Image
    alpha_hint: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    data = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (data.size and data.max() > 255):
        data = data / 257.0
    elif image.mode == "F" and data.size and np.nanmax(data) <= 1.0:
        data = data * 255.0
    data = np.nan_to_num(data, nan=0.0)
    return Image.fromarray(np.clip(data, 0, 255).round().astype(np.uint8), mode="L")


def prepare_image(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> PreparedImage:
    """Normalise any common upload to RGB: EXIF rotation, palette, grayscale, 16-bit, alpha.

    Transparency is flattened onto ``background``; when some pixels are transparent the
    alpha is kept as ``alpha_hint`` (opaque = subject), which the tab can use as the mask
    when nothing is detected or combine with the detection.
    """
    if image is None:
        raise ValueError("No image: upload a picture first")
    notes: list[str] = []
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not stop the job
        transposed = image
    if transposed is not image and transposed.size != image.size:
        notes.append("rotated according to its EXIF orientation")
    image = transposed if transposed is not None else image
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA")
        notes.append("palette image converted")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _sixteen_bit_to_8(image)
        notes.append(f"{'16-bit' if mode != 'F' else 'float'} image scaled to 8 bits")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("RGBa", "La"):
        image = image.convert(mode.upper())
    alpha_hint = None
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            alpha_hint = alpha >= 128
            notes.append("transparency flattened; its alpha can serve as the subject mask")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode == "L":
        image = image.convert("RGB")
        if mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            notes.append("grayscale image converted to RGB")
    elif image.mode != "RGB":
        notes.append(f"{image.mode} image converted to RGB")
        image = image.convert("RGB")
    else:
        image = image.copy()
    return PreparedImage(image=image, alpha_hint=alpha_hint, notes=notes)


def to_model_size(image: Image.Image, max_side: int = DEFAULT_MODEL_SIDE, multiple: int = 8) -> Image.Image:
    """The image scaled so its longer side is at most ``max_side`` and both sides are multiples of ``multiple``."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.Resampling.LANCZOS)
