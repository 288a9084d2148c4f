"""Typed generation requests and results, seeds, and the live state of a running job.

Everything that asks for images (the UI, the REST routes, the tests) builds a
:class:`GenerationRequest`; everything that produces them returns a
:class:`GenerationResult`. A :class:`Job` is the channel between a running
generation and whoever waits for it: step progress, a cheap preview, and the
Interrupt / Skip flags.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from webui.errors import EaselError

MAX_SEED = 2**32 - 1
DEFAULT_MAX_SIDE = 2048
MIN_SIDE = 64
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100


class RequestError(EaselError, ValueError):
    """A request that cannot be run as asked; the message is meant for the user."""


@dataclass
class RefinerOptions:
    """SDXL refiner: which model, and at what fraction of the steps to hand over."""

    model: str
    switch_at: float = 0.8


@dataclass
class GenerationRequest:
    """Everything that decides an image. Extensions read ``extras`` for their own options."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_count: int = 1
    batch_size: int = 1
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    refiner: RefinerOptions | None = None
    save: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    def validate(self, max_side: int = DEFAULT_MAX_SIDE) -> None:
        """Raise :class:`RequestError` with a clear message for values that cannot work."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RequestError(f"{name} must be a whole number of pixels, got {value!r}")
            if value < MIN_SIDE or value > max_side:
                raise RequestError(f"{name} must be between {MIN_SIDE} and {max_side} pixels, got {value}")
            if value % 8:
                raise RequestError(f"{name} must be a multiple of 8, got {value} (try {value - value % 8 or 8})")
        if not 1 <= int(self.steps) <= MAX_STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 0.0 <= float(self.cfg_scale) <= 30.0:
            raise RequestError(f"CFG scale must be between 0 and 30, got {self.cfg_scale}")
        if not 1 <= int(self.batch_size) <= MAX_BATCH_SIZE:
            raise RequestError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}")
        if not 1 <= int(self.batch_count) <= MAX_BATCH_COUNT:
            raise RequestError(f"batch count must be between 1 and {MAX_BATCH_COUNT}, got {self.batch_count}")
        if not -1 <= int(self.seed) <= MAX_SEED:
            raise RequestError(f"seed must be -1 (random) or between 0 and {MAX_SEED}, got {self.seed}")
        if not self.model:
            raise RequestError("no model chosen")
        if self.refiner is not None and not 0.0 < float(self.refiner.switch_at) < 1.0:
            raise RequestError(f"refiner switch point must be between 0 and 1, got {self.refiner.switch_at}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (for the REST API and the last-used-values store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        """Build a request from a dict, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        refiner = values.get("refiner")
        if isinstance(refiner, dict):
            values["refiner"] = RefinerOptions(**refiner)
        return cls(**values)


def resolve_seed(seed: int) -> int:
    """-1 means "pick one"; any other value is used as given."""
    if int(seed) == -1:
        return random.SystemRandom().randint(0, MAX_SEED)
    return int(seed)


@dataclass
class ImageRecord:
    """One produced image with the parameters that made it."""

    image: Any  # PIL.Image.Image
    seed: int
    infotext: str
    path: str | None = None


@dataclass
class GenerationResult:
    """What a generation returns: images in order, plus what happened."""

    images: list[ImageRecord] = field(default_factory=list)
    interrupted: bool = False
    skipped: int = 0
    seconds: float = 0.0

    @property
    def seeds(self) -> list[int]:
        return [record.seed for record in self.images]

    @property
    def first_seed(self) -> int | None:
        return self.images[0].seed if self.images else None


class Job:
    """Live state of one generation, shared between the worker and the waiting UI.

    The worker calls :meth:`step`; the UI reads :meth:`snapshot` and may call
    :meth:`interrupt` (stop everything, keep what is done) or :meth:`skip`
    (stop the current image, go on with the next).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interrupted = False
        self._skip_requested = False
        self.total_images = 0
        self.image_index = 0
        self.step_index = 0
        self.total_steps = 0
        self.preview: Any = None
        self.message = ""
        self.started = time.monotonic()

    def interrupt(self) -> None:
        """Stop the whole job at the next step; finished images are kept."""
        with self._lock:
            self._interrupted = True

    def skip(self) -> None:
        """Stop the current image at the next step and go on with the next one."""
        with self._lock:
            self._skip_requested = True

    @property
    def interrupted(self) -> bool:
        with self._lock:
            return self._interrupted

    def take_skip(self) -> bool:
        """True once per Skip press; the worker calls it when an image is done."""
        with self._lock:
            requested, self._skip_requested = self._skip_requested, False
            return requested

    @property
    def skip_requested(self) -> bool:
        with self._lock:
            return self._skip_requested

    def start_image(self, index: int, total_images: int, total_steps: int) -> None:
        with self._lock:
            self.image_index = index
            self.total_images = total_images
            self.total_steps = total_steps
            self.step_index = 0

    def step(self, step_index: int, preview: Any = None) -> None:
        with self._lock:
            self.step_index = step_index
            if preview is not None:
                self.preview = preview

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the progress, for a progress bar."""
        with self._lock:
            return {
                "image": self.image_index,
                "images": self.total_images,
                "step": self.step_index,
                "steps": self.total_steps,
                "preview": self.preview,
                "elapsed": time.monotonic() - self.started,
                "message": self.message,
            }

    def progress_text(self) -> str:
        snap = self.snapshot()
        if not snap["steps"]:
            return snap["message"] or "Waiting…"
        return (
            f"Image {snap['image'] + 1}/{max(snap['images'], 1)} · step {snap['step']}/{snap['steps']}"
            f" · {snap['elapsed']:.1f}s"
        )
