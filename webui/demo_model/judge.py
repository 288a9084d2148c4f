"""Classical judging of a shape image: which colours, which shape, which size.

Used to measure prompt adherence of the demo model without any learned classifier:
the background colour is the median of the border, the shape is what differs from it,
its colour the median of its eroded interior, its size the side of its bounding box, and
its kind follows from the convex hull (solidity, corner count) and the box's aspect.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from webui.demo_model.shapes import COLOURS, ShapeSpec

COLOUR_NAMES = list(COLOURS)
COLOUR_TABLE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as "shape"
LARGE_SIDE = 0.55  # bounding-box side (fraction of the image) between small and large


@dataclass(frozen=True)
class Judgement:
    """What the image shows, as far as the classical measures can tell."""

    colour: str | None
    background: str
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


def _shape_kind(mask: np.ndarray) -> str | None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    hull = cv2.convexHull(contour)
    hull_area = cv2.contourArea(hull)
    if area < 20 or hull_area <= 0:
        return None
    solidity = area / hull_area
    if solidity < 0.65:
        return "star"
    if solidity < 0.86:
        return "cross"
    corners = len(cv2.approxPolyDP(hull, 0.04 * cv2.arcLength(hull, True), True))
    x, y, width, height = cv2.boundingRect(contour)
    if corners == 3:
        return "triangle"
    if corners == 4:
        return "diamond" if min(width, height) / max(width, height) < 0.85 else "square"
    return "circle"


def judge(image: Image.Image) -> Judgement:
    """Classify an RGB image of one shape on a plain background."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    side = pixels.shape[0]
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                             pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    mask = np.linalg.norm(pixels - background_rgb, axis=2) > FOREGROUND_DISTANCE
    background = nearest_colour(background_rgb)
    if mask.sum() < 12:
        return Judgement(colour=None, background=background, shape=None, size=None)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    mask = labels == largest
    interior = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    colour_pixels = pixels[interior] if interior.sum() >= 4 else pixels[mask]
    colour = nearest_colour(np.median(colour_pixels, axis=0))
    width = stats[largest, cv2.CC_STAT_WIDTH] / side
    height = stats[largest, cv2.CC_STAT_HEIGHT] / side
    size = "large" if max(width, height) > LARGE_SIDE else "small"
    return Judgement(colour=colour, background=background, shape=_shape_kind(mask), size=size)
