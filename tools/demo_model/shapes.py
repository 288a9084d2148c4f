"""Deterministic synthetic captioned images: a coloured shape on a coloured background.

Every sample is drawn from a ``numpy`` generator seeded by (seed, index), so a dataset is
the same on every machine and can be regenerated on the fly instead of stored. Captions
read like ``"a small red circle on a blue background"``; the position is sometimes named
(``"... on the left"``). The shape ``heart`` is kept out of the base set on purpose: it is
the concept a LoRA test teaches the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (130, 40, 170),
    "pink": (245, 130, 190),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
HELD_OUT_SHAPES = ("heart",)
ALL_SHAPES = SHAPES + HELD_OUT_SHAPES  # what a caption may name and the judge can tell apart
SIZES = {"small": 0.2, "large": 0.38}  # shape radius as a fraction of the image side
POSITIONS = {"center": (0.5, 0.5), "left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3),
             "bottom": (0.5, 0.7)}
POSITION_WORDS = {"center": "in the center", "left": "on the left", "right": "on the right", "top": "at the top",
                  "bottom": "at the bottom"}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows."""

    shape: str
    colour: str
    background: str
    size: str
    position: str = "center"
    rotation: float = 0.0  # degrees, small jitter so the model sees variety

    def caption(self, name_position: bool = True) -> str:
        article = "an" if self.background[0] in "aeiou" else "a"
        text = f"a {self.size} {self.colour} {self.shape} on {article} {self.background} background"
        if name_position and self.position != "center":
            text += f" {POSITION_WORDS[self.position]}"
        return text


def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    def ring(count: int, radius_of: callable, start: float) -> list[tuple[float, float]]:
        points = []
        for index in range(count):
            angle = math.radians(start + rotation) + 2 * math.pi * index / count
            radius = radius_of(index)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points

    if shape == "square":
        return ring(4, lambda i: r * 1.2, 45)
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "triangle":
        return ring(3, lambda i: r * 1.1, -90)
    if shape == "star":
        return ring(10, lambda i: r * (1.0 if i % 2 == 0 else 0.45), -90)
    if shape == "cross":
        arm = r * 0.36
        offsets = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r), (-arm, r),
                   (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]
        return [(cx + dx, cy + dy) for dx, dy in offsets]
    if shape == "heart":
        points = []
        for index in range(64):
            t = 2 * math.pi * index / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            points.append((cx + x * r / 17, cy + y * r / 17))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: ShapeSpec, size: int = 128) -> Image.Image:
    """Draw ``spec`` as an anti-aliased RGB image of ``size`` x ``size`` pixels."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[spec.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[spec.position]
    cx, cy, r = fx * big, fy * big, SIZES[spec.size] * big
    colour = COLOURS[spec.colour]
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(_polygon(spec.shape, cx, cy, r, spec.rotation), fill=colour)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def sample_spec(rng: np.random.Generator, shapes: tuple[str, ...] = SHAPES) -> ShapeSpec:
    """One random spec; shape and background colours always differ."""
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    background = colour
    while background == colour:
        background = names[rng.integers(len(names))]
    size = "small" if rng.random() < 0.5 else "large"
    position = "center" if size == "large" or rng.random() < 0.4 else list(POSITIONS)[1 + rng.integers(4)]
    return ShapeSpec(shape=shapes[rng.integers(len(shapes))], colour=colour, background=background, size=size,
                     position=position, rotation=float(rng.uniform(-8, 8)))


def sample(seed: int, index: int, size: int = 128, shapes: tuple[str, ...] = SHAPES) -> tuple[Image.Image, str, ShapeSpec]:
    """Sample ``index`` of the dataset with ``seed``: (image, caption, spec), the same everywhere."""
    rng = np.random.default_rng([seed, index])
    spec = sample_spec(rng, shapes)
    name_position = bool(rng.random() < 0.7)
    return render(spec, size), spec.caption(name_position), spec


def parse_caption(caption: str) -> ShapeSpec:
    """The spec a caption asks for (the inverse of :meth:`ShapeSpec.caption`)."""
    words = caption.lower().replace(",", " ").split()
    shape = next((w for w in words if w in ALL_SHAPES), None)
    size = next((w for w in words if w in SIZES), "large")
    if shape is None:
        raise ValueError(f"no known shape in {caption!r}")
    before, _, after = caption.lower().partition(shape)
    colour = next((w for w in before.split() if w in COLOURS), None)
    background = next((w for w in after.split() if w in COLOURS), None)
    position = "center"
    for key, phrase in POSITION_WORDS.items():
        if phrase in caption.lower():
            position = key
    if colour is None or background is None:
        raise ValueError(f"caption {caption!r} must name a shape colour and a background colour")
    return ShapeSpec(shape=shape, colour=colour, background=background, size=size, position=position)
