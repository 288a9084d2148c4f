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

from .masks import grow


def _ndimage():
    """scipy.ndimage, imported on first use (it takes about a second; the UI is served before)."""
    from scipy import ndimage

    return ndimage


__all__ = ["composite_subject", "blend_alpha"]


def blend_alpha(mask: np.ndarray, erode: int = 2, feather: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, core)``: float32 weight of the original (1 on ``core``, the eroded mask) and ``core``."""
    core = grow(np.asarray(mask, dtype=bool), -abs(int(erode)))
    if not core.any():
        return np.zeros(core.shape, dtype=np.float32), core
    if feather <= 0:
        return core.astype(np.float32), core
    distance = _ndimage().distance_transform_edt(~core)
    alpha = np.clip(1.0 - distance / float(feather + 1), 0.0, 1.0).astype(np.float32)
    alpha[core] = 1.0
    return alpha, core


def composite_subject(original: Image.Image, generated: Image.Image, mask: np.ndarray, erode: int = 2,
                      feather: int = 4, decontaminate: float = 0.0) -> Image.Image:
    """The generated picture with the original subject pasted back (RGB, at the original's size).

    ``generated`` is resized to the original's size if needed. ``decontaminate`` (0..1) is how
    strongly edge-ring colours are replaced by the nearest interior subject colour. Only the
    subject's bounding box (plus the blend width) is computed on, so very large images stay
    cheap.
    """
    original = original.convert("RGB")
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    generated = generated.convert("RGB")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (original.height, original.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {original.width}x{original.height}")
    out = np.array(generated, dtype=np.uint8)
    if not mask.any():
        return Image.fromarray(out, mode="RGB")
    source_full = np.asarray(original)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    pad = max(0, int(feather)) + 2
    top, bottom = max(0, rows[0] - pad), min(mask.shape[0], rows[-1] + pad + 1)
    left, right = max(0, cols[0] - pad), min(mask.shape[1], cols[-1] + pad + 1)
    window = (slice(top, bottom), slice(left, right))
    # The crop leaves at least ``pad`` background pixels around the mask (or ends at the image
    # border, which erosion treats as background anyway), so the result equals the full-size one.
    alpha, core = blend_alpha(mask[window], erode, feather)
    source = source_full[window]
    target = out[window]
    ring = (alpha > 0) & ~core
    if ring.any():
        front = source[ring].astype(np.float32)
        if decontaminate > 0 and core.any():
            _, (near_rows, near_cols) = _ndimage().distance_transform_edt(~core, return_indices=True)
            nearest = source[near_rows[ring], near_cols[ring]].astype(np.float32)
            pull = (float(np.clip(decontaminate, 0, 1)) * (1.0 - alpha[ring]))[:, None]
            front = front * (1 - pull) + nearest * pull
        weight = alpha[ring][:, None]
        blended = front * weight + target[ring].astype(np.float32) * (1.0 - weight)
        target[ring] = np.clip(blended, 0, 255).round().astype(np.uint8)
    target[core] = source[core]  # exact copy: the subject's interior never changes
    return Image.fromarray(out, mode="RGB")
