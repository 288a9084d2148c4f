"""Paste the original subject back over the generated picture.

The subject mask is eroded by ``erode`` pixels; inside the eroded mask the output *is* the
input (copied, not blended, so it is bit-identical and there is no colour shift). Outside
it the blend weight falls linearly to 0 over ``feather`` pixels, so only a thin ring mixes
old and new. Optional decontamination pulls the ring's colours towards the nearest interior
subject colour, which removes the old background's tint (the "halo") from the edge.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from .masks import grow

__all__ = ["composite_subject", "blend_alpha"]


def blend_alpha(mask: np.ndarray, erode: int = 2, feather: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, core)``: float32 weight of the original (1 on ``core``, the eroded mask) and ``core``."""
    core = grow(np.asarray(mask, dtype=bool), -abs(int(erode)))
    if not core.any():
        return np.zeros(core.shape, dtype=np.float32), core
    if feather <= 0:
        return core.astype(np.float32), core
    distance = ndimage.distance_transform_edt(~core)
    alpha = np.clip(1.0 - distance / float(feather + 1), 0.0, 1.0).astype(np.float32)
    alpha[core] = 1.0
    return alpha, core


def composite_subject(original: Image.Image, generated: Image.Image, mask: np.ndarray, erode: int = 2,
                      feather: int = 4, decontaminate: float = 0.0) -> Image.Image:
    """The generated picture with the original subject pasted back (RGB, at the original's size).

    ``generated`` is resized to the original's size if needed. ``decontaminate`` (0..1) is how
    strongly edge-ring colours are replaced by the nearest interior subject colour.
    """
    original = original.convert("RGB")
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    generated = generated.convert("RGB")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (original.height, original.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {original.width}x{original.height}")
    alpha, core = blend_alpha(mask, erode, feather)
    source = np.asarray(original)
    target = np.asarray(generated)
    front = source.astype(np.float32)
    ring = (alpha > 0) & ~core
    if decontaminate > 0 and core.any() and ring.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~core, return_indices=True)
        nearest = source[rows, cols].astype(np.float32)
        pull = (float(np.clip(decontaminate, 0, 1)) * (1.0 - alpha))[..., None]
        front = np.where(ring[..., None], front * (1 - pull) + nearest * pull, front)
    blended = front * alpha[..., None] + target.astype(np.float32) * (1.0 - alpha[..., None])
    out = np.clip(blended, 0, 255).round().astype(np.uint8)
    out[core] = source[core]  # exact copy: the subject's interior never changes
    return Image.fromarray(out, mode="RGB")
