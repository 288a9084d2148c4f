"""The offline demo domain seen by classical means: which coloured shapes an image shows, and where.

The demo model (``easel-shapes``) draws one coloured shape on a plain background; its judge
(``tools.demo_model.judge``) reads shape, colour and size without any learned weights. This
module finds every such shape in an image -- each region that differs from the background
(the median colour of the image's border), judged on its own -- so that the Background
tab's demo detector can turn "the red circle" into a box and a mask offline, with a
meaningful result. Labelled as a demo everywhere it is offered: it understands only
pictures of flat shapes on a plain background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

GENERIC_WORDS = ("shape", "shapes", "object", "objects", "subject", "thing", "foreground")
MIN_AREA_FRACTION = 0.002  # smaller regions are anti-aliasing crumbs, not shapes
MIN_AREA_PIXELS = 12


@dataclass(frozen=True)
class DemoShape:
    """One shape found in an image: its box ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive), its
    mask, what the judge reads, and ``score``: how well the named shape's template fits it (IoU)."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    colour: str
    shape: str | None
    size: str | None
    score: float

    @property
    def label(self) -> str:
        """e.g. ``"large red circle"``."""
        return " ".join(part for part in (self.size, self.colour, self.shape or "shape") if part)


def _border_median(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                             pixels[:, -2:].reshape(-1, 3)])
    return np.median(border, axis=0)


def find_demo_shapes(image: Image.Image) -> list[DemoShape]:
    """Every shape in a demo-domain image, largest first (empty when the background is not plain)."""
    import cv2

    from tools.demo_model.judge import FOREGROUND_DISTANCE, MIN_PLAIN_BORDER, judge, plain_fraction, template_scores

    rgb = image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.float32)
    background = _border_median(pixels)
    if plain_fraction(pixels, background) < MIN_PLAIN_BORDER:
        return []
    foreground = np.linalg.norm(pixels - background, axis=2) > FOREGROUND_DISTANCE
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8))
    min_area = max(MIN_AREA_PIXELS, MIN_AREA_FRACTION * foreground.size)
    found = []
    for index in range(1, count):
        if stats[index, cv2.CC_STAT_AREA] < min_area:
            continue
        mask = labels == index
        alone = pixels.copy()
        alone[foreground & ~mask] = background  # the other shapes painted over: the judge sees this one only
        alone_image = Image.fromarray(alone.round().clip(0, 255).astype(np.uint8))
        verdict = judge(alone_image)
        if verdict.colour is None:
            continue
        scores = template_scores(alone_image)
        score = scores[verdict.shape] if verdict.shape else max(scores.values())
        x, y = stats[index, cv2.CC_STAT_LEFT], stats[index, cv2.CC_STAT_TOP]
        box = (int(x), int(y), int(x + stats[index, cv2.CC_STAT_WIDTH]), int(y + stats[index, cv2.CC_STAT_HEIGHT]))
        found.append(DemoShape(box=box, mask=mask, colour=verdict.colour, shape=verdict.shape, size=verdict.size,
                               score=float(score)))
    return sorted(found, key=lambda item: -int(item.mask.sum()))


def prompt_terms(prompt: str) -> tuple[set[str], set[str], set[str], bool]:
    """The colours, shapes and sizes a prompt names, and whether it names a shape generically ("the shape")."""
    from tools.demo_model.shapes import ALL_SHAPES, COLOURS, SIZES

    words = re.findall(r"[a-z]+", (prompt or "").lower())
    singular = [word[:-1] if word.endswith("s") and word[:-1] in ALL_SHAPES else word for word in words]
    return ({w for w in singular if w in COLOURS}, {w for w in singular if w in ALL_SHAPES},
            {w for w in singular if w in SIZES}, any(w in GENERIC_WORDS for w in words))


def match_demo_shapes(image: Image.Image, prompt: str) -> list[DemoShape]:
    """The shapes of ``image`` that ``prompt`` names ("the red circle", "small shapes", "the star").

    A shape matches when its colour is one the prompt names (if it names any), its kind too,
    and its size too. A prompt that names no colour, shape kind or size, nor a generic word
    ("shape", "object", "subject"), matches nothing: "the dog" is not in the demo domain.
    """
    colours, shapes, sizes, generic = prompt_terms(prompt)
    if not (colours or shapes or sizes or generic):
        return []
    return [item for item in find_demo_shapes(image)
            if (not colours or item.colour in colours) and (not shapes or item.shape in shapes)
            and (not sizes or item.size in sizes)]
