"""Classical judging of a shape image: which colours, which shape, which size.

Used to measure prompt adherence of the demo model without any learned classifier:
the background colour is the median of the border (an image whose border is not mostly that
one colour, such as noise, has no plain background and shows no shape: every attribute is
None), the shape is what differs from it,
its colour the median of its eroded interior, its size the side of its bounding box, and
its kind is the shape whose template, fitted to that box, overlaps it best (IoU at least
:data:`MIN_SHAPE_IOU`; below that the shape is unrecognised).

Template overlap replaced an earlier corner-count/solidity rule: both are 100% right on
ground-truth images, but the rule called a generated star "cross" whenever its points came
out a little fat (solidity above 0.65), though it plainly reads as a star; see
docs/benchmarks.md, "Offline demo model".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from tools.demo_model.shapes import ALL_SHAPES, COLOURS, ShapeSpec, render

COLOUR_NAMES = list(COLOURS)
COLOUR_TABLE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as "shape"
LARGE_SIDE = 0.55  # bounding-box side (fraction of the image) between small and large
MIN_SHAPE_IOU = 0.7  # ground-truth images score 0.83 or more with their own template
#: Share of the border within FOREGROUND_DISTANCE of its median colour for a plain background:
#: 1.00 on ground-truth images, 0.99 or more on the demo model's, about 0.05 on uniform noise
#: and 0.46 on Gaussian noise of standard deviation 40.
MIN_PLAIN_BORDER = 0.75


@dataclass(frozen=True)
class Judgement:
    """What the image shows, as far as the classical measures can tell."""

    colour: str | None
    background: str | None  # None: no plain background (not a picture of one shape)
    shape: str | None
    size: str | None

    def matches(self, spec: ShapeSpec) -> dict[str, bool]:
        """Per attribute: does the image show what ``spec`` asked for?"""
        return {
            "colour": self.colour == spec.colour,
            "background": self.background == spec.background,
            "colours": self.colour == spec.colour and self.background == spec.background,
            "shape": self.shape == spec.shape,
            "size": self.size == spec.size,
        }


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour closest to ``rgb`` (Euclidean in RGB)."""
    distances = np.linalg.norm(COLOUR_TABLE - np.asarray(rgb, dtype=np.float32), axis=1)
    return COLOUR_NAMES[int(distances.argmin())]


def _border(pixels: np.ndarray) -> np.ndarray:
    """The RGB values of the two-pixel border, one row each."""
    return np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                           pixels[:, -2:].reshape(-1, 3)])


def _border_colour(pixels: np.ndarray) -> np.ndarray:
    """The median RGB of the two-pixel border (the background colour)."""
    return np.median(_border(pixels), axis=0)


def plain_fraction(pixels: np.ndarray, background_rgb: np.ndarray) -> float:
    """The share of the border's pixels that are the background colour (within FOREGROUND_DISTANCE)."""
    return float((np.linalg.norm(_border(pixels) - background_rgb, axis=1) <= FOREGROUND_DISTANCE).mean())


def _largest_foreground(pixels: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    mask = np.linalg.norm(pixels - background_rgb, axis=2) > FOREGROUND_DISTANCE
    if mask.sum() < 12:
        return np.zeros(mask.shape, bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    return labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def foreground_mask(image: Image.Image) -> np.ndarray:
    """The largest connected region that differs from the border's median colour (may be empty)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return _largest_foreground(pixels, _border_colour(pixels))


TEMPLATE_ROTATIONS = (-8.0, 0.0, 8.0)  # the training data's rotation jitter spans these


@lru_cache(maxsize=None)
def _canonical(shape: str, rotation: float) -> np.ndarray:
    drawn = np.asarray(render(ShapeSpec(shape=shape, colour="white", background="black", size="large",
                                        rotation=rotation), 256))
    mask = drawn[..., 0] > 127
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8) * 255


def _template(shape: str, rotation: float, width: int, height: int) -> np.ndarray:
    """The mask of ``shape`` cropped to its bounding box and stretched to ``width`` x ``height``."""
    return cv2.resize(_canonical(shape, rotation), (width, height), interpolation=cv2.INTER_AREA) > 127


def _mask_scores(mask: np.ndarray, shapes: tuple[str, ...]) -> dict[str, float]:
    if not mask.any():
        return {shape: 0.0 for shape in shapes}
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = crop.shape
    scores = {}
    for shape in shapes:
        scores[shape] = max(
            float((template & crop).sum() / max((template | crop).sum(), 1))
            for template in (_template(shape, rotation, width, height) for rotation in TEMPLATE_ROTATIONS))
    return scores


def _best_shape(scores: dict[str, float], min_iou: float) -> str | None:
    best = max(scores, key=scores.get)
    return best if scores[best] >= min_iou and scores[best] > 0 else None


def template_scores(image: Image.Image, shapes: tuple[str, ...] = ALL_SHAPES) -> dict[str, float]:
    """Per shape, the IoU of the image's foreground with that shape fitted to the same bounding box.

    ``shapes`` includes the held-out ``heart`` by default, so this also tells whether a LoRA
    taught the model to draw one.
    """
    return _mask_scores(foreground_mask(image), shapes)


def template_shape(image: Image.Image, shapes: tuple[str, ...] = ALL_SHAPES,
                   min_iou: float = MIN_SHAPE_IOU) -> str | None:
    """The shape whose fitted template overlaps the image's foreground best, when that IoU is at
    least ``min_iou`` (None otherwise: no foreground, or nothing recognisable)."""
    return _best_shape(template_scores(image, shapes), min_iou)


def judge(image: Image.Image) -> Judgement:
    """Classify an RGB image of one shape on a plain background."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    side = pixels.shape[0]
    background_rgb = _border_colour(pixels)
    if plain_fraction(pixels, background_rgb) < MIN_PLAIN_BORDER:
        return Judgement(colour=None, background=None, shape=None, size=None)
    background = nearest_colour(background_rgb)
    mask = _largest_foreground(pixels, background_rgb)
    if not mask.any():
        return Judgement(colour=None, background=background, shape=None, size=None)
    interior = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    colour_pixels = pixels[interior] if interior.sum() >= 4 else pixels[mask]
    colour = nearest_colour(np.median(colour_pixels, axis=0))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    width, height = (cols[-1] - cols[0] + 1) / side, (rows[-1] - rows[0] + 1) / side
    size = "large" if max(width, height) > LARGE_SIDE else "small"
    shape = _best_shape(_mask_scores(mask, ALL_SHAPES), MIN_SHAPE_IOU)
    return Judgement(colour=colour, background=background, shape=shape, size=size)
