"""Typed generation requests and results, seeds, and the live state of a running job.

Everything that asks for images (the UI, the REST routes, the tests) builds a
:class:`GenerationRequest`: plain data (JSON-serialisable through :meth:`to_dict`; images
travel as PNG bytes) plus the name of its task (``txt2img``, ``img2img``, ``inpaint``).
Everything that produces images returns a :class:`GenerationResult`. A :class:`Job` is the
channel between a running generation and whoever waits for it: its events (queued, started,
step, image, finished / failed / interrupted / cancelled), step progress, a cheap preview,
and the Interrupt / Skip flags.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from webui.errors import EaselError

MAX_SEED = 2**32 - 1
DEFAULT_MAX_SIDE = 2048
MIN_SIDE = 64
MIN_IMAGE_TASK_SIDE = 16
MAX_STEPS = 500  # the UI offers up to 150, as A1111; API callers may ask for more
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_MASK_BLUR = 64
MAX_INPAINT_PADDING = 256

TASKS = ("txt2img", "img2img", "inpaint")
#: img2img resize modes, by their A1111 number.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
#: What the masked area starts from (A1111's ``inpainting_fill``), by number.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
IMAGE_FIELDS = ("init_image", "mask")


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
    task: str = "txt2img"
    # img2img and inpaint (A1111's field names and defaults)
    init_image: bytes | None = None
    """The starting image, PNG bytes (see :func:`image_to_png`)."""
    mask: bytes | None = None
    """inpaint: white = repaint, black = keep (PNG bytes; any size, it is resized to the image)."""
    denoising_strength: float = 0.75
    resize_mode: int = 0
    """0 just resize, 1 crop and resize, 2 resize and fill (see :data:`RESIZE_MODES`)."""
    mask_blur: int = 4
    inpainting_fill: int = 1
    """0 fill, 1 original, 2 latent noise, 3 latent nothing (see :data:`MASKED_CONTENT`)."""
    inpaint_full_res: bool = False
    """Inpaint area "Only masked": work on the mask's surroundings at the full working size."""
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    infotext_extra: dict[str, Any] = field(default_factory=dict)
    """Fields the caller adds to every image's infotext (e.g. the Background tab's mask settings)."""

    def validate(self, max_side: int = DEFAULT_MAX_SIDE) -> None:
        """Raise :class:`RequestError` with a clear message for values that cannot work."""
        # An image job works at its input's size, which may be smaller (the Background tab's small uploads).
        min_side = MIN_SIDE if self.task == "txt2img" else MIN_IMAGE_TASK_SIDE
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RequestError(f"{name} must be a whole number of pixels, got {value!r}")
            if value < min_side or value > max_side:
                raise RequestError(f"{name} must be between {min_side} and {max_side} pixels, got {value}")
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
        if self.task not in TASKS:
            raise RequestError(f"unknown task {self.task!r}; one of {', '.join(TASKS)}")
        if self.task != "txt2img":
            self._validate_image_task()

    def _validate_image_task(self) -> None:
        if not self.init_image:
            raise RequestError(f"{self.task} needs an initial image")
        if self.refiner is not None:
            raise RequestError("the SDXL refiner is available in txt2img only")
        if not 0.0 < float(self.denoising_strength) <= 1.0:
            raise RequestError(f"denoising strength must be above 0 and at most 1, got {self.denoising_strength}")
        if int(int(self.steps) * float(self.denoising_strength)) < 1:
            raise RequestError(f"{self.steps} steps at denoising strength {self.denoising_strength} runs no denoising "
                               f"step (steps x strength must be at least 1): raise the steps or the strength")
        if int(self.resize_mode) not in range(len(RESIZE_MODES)):
            raise RequestError(f"resize mode must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}) or 2 "
                               f"({RESIZE_MODES[2]}), got {self.resize_mode}")
        if self.task == "inpaint":
            if not self.mask:
                raise RequestError("inpaint needs a mask (white = repaint)")
            if not 0 <= int(self.mask_blur) <= MAX_MASK_BLUR:
                raise RequestError(f"mask blur must be between 0 and {MAX_MASK_BLUR}, got {self.mask_blur}")
            if int(self.inpainting_fill) not in range(len(MASKED_CONTENT)):
                raise RequestError(f"masked content must be 0-3 ({', '.join(MASKED_CONTENT)}), "
                                   f"got {self.inpainting_fill}")
            if not 0 <= int(self.inpaint_full_res_padding) <= MAX_INPAINT_PADDING:
                raise RequestError(f"only-masked padding must be between 0 and {MAX_INPAINT_PADDING} pixels, "
                                   f"got {self.inpaint_full_res_padding}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (for the REST API and the last-used-values store): images as base64 PNG."""
        data = asdict(self)
        for name in IMAGE_FIELDS:
            if data[name] is not None:
                data[name] = base64.b64encode(data[name]).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        """Build a request from a dict (images as bytes or base64 PNG), ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        refiner = values.get("refiner")
        if isinstance(refiner, dict):
            values["refiner"] = RefinerOptions(**refiner)
        for name in IMAGE_FIELDS:
            if isinstance(values.get(name), str):
                values[name] = base64.b64decode(values[name])
        return cls(**values)


def image_to_png(image: Any) -> bytes:
    """A PIL image as PNG bytes, for :class:`GenerationRequest`'s image fields."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_image(data: bytes) -> Any:
    """PNG (or any Pillow-readable) bytes back to a loaded PIL image."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise RequestError(f"the image could not be read ({type(exc).__name__}: {exc})") from None
    return image


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


#: The kinds of :class:`Job` events, in the order a job can emit them.
#: ``dispatched`` (which worker runs it) and ``retried`` (its worker died, it runs again) come from
#: the Ray Serve backend only (:mod:`webui.backends.ray_serve`).
EVENT_KINDS = ("queued", "waiting", "started", "dispatched", "retried", "step", "image", "finished", "failed",
               "interrupted", "cancelled")
FINAL_EVENTS = ("finished", "failed", "interrupted", "cancelled")


class Job:
    """Live state of one generation, shared between the worker and whoever waits for it.

    The worker calls :meth:`start_image`, :meth:`step` and :meth:`emit`; a follower reads
    :meth:`snapshot` or :meth:`wait_events` and may call :meth:`interrupt` (stop everything,
    keep what is done) or :meth:`skip` (stop the current image, go on with the next).
    Events are plain dicts (``{"kind": ..., "job": id, "time": ..., ...}``); a ``step``
    event carries ``step``/``steps``/``image``/``images`` and, every few steps, ``preview: True``
    when :attr:`preview` (a PIL image, in process) was replaced; events hold no images, so a
    job's history stays small and plain. ``position`` is the number of jobs ahead in the queue plus
    one while queued, 0 once running.

    ``job_id`` is a fresh random hex id unless given (a job re-queued after a restart keeps
    its id). :meth:`add_listener` subscribes a function to every later event (the job
    records of :mod:`webui.job_store` use it).
    """

    def __init__(self, job_id: str | None = None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._interrupted = False
        self._skip_requested = False
        self._waiting = False
        self._listeners: list[Any] = []
        self.id = job_id or uuid.uuid4().hex
        self.status = "new"
        self.position = 0
        self.total_images = 0
        self.image_index = 0
        self.step_index = 0
        self.total_steps = 0
        self.preview: Any = None
        self.message = ""
        self.started = time.monotonic()
        self._events: list[dict[str, Any]] = []
        self.result: "GenerationResult | None" = None
        """Set by the queue when the job finished or was interrupted."""
        self.error: BaseException | None = None
        """Set by the queue when the job failed; :meth:`webui.queue.JobQueue.wait` raises it again."""

    # --- events ------------------------------------------------------------------------

    def emit(self, kind: str, **data: Any) -> None:
        """Record an event, wake whoever waits in :meth:`wait_events` and tell the listeners."""
        with self._changed:
            event, listeners = self._record(kind, data)
        self._tell(listeners, event)

    def _record(self, kind: str, data: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """Append an event and update :attr:`status`; the caller holds ``self._changed``."""
        event = {"kind": kind, "job": self.id, "time": time.time(), **data}
        if kind in FINAL_EVENTS or kind in ("queued", "started"):
            self.status = {"started": "running"}.get(kind, kind)
        self._events.append(event)
        self._changed.notify_all()
        return event, list(self._listeners)

    def _tell(self, listeners: list[Any], event: dict[str, Any]) -> None:
        for listener in listeners:
            try:
                listener(self, event)
            except Exception:  # noqa: BLE001 - a listener must never break the job
                logging.getLogger(__name__).exception("A listener of job %s failed on %r", self.id, event["kind"])

    def add_listener(self, listener: Any) -> None:
        """Call ``listener(job, event)`` after each later event, on the thread that emits it.

        Listeners run after the event is recorded (``job.status`` already says it); one that
        raises is logged and the job goes on. Keep them quick: most events come from the worker.
        """
        with self._lock:
            self._listeners.append(listener)

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The events from number ``since`` on."""
        with self._lock:
            return list(self._events[since:])

    def wait_events(self, since: int = 0, timeout: float | None = None) -> list[dict[str, Any]]:
        """Events from number ``since`` on, waiting up to ``timeout`` seconds for one when there are none yet."""
        with self._changed:
            if len(self._events) <= since and not self.done:
                self._changed.wait(timeout)
            return list(self._events[since:])

    @property
    def done(self) -> bool:
        """Whether the job has ended (finished, failed, interrupted or cancelled)."""
        return self.status in FINAL_EVENTS

    def set_position(self, position: int) -> None:
        """The queue tells a waiting job how many jobs are ahead of it (plus one); 0 once it runs.

        A new place is recorded as a ``queued`` event only while the job waits in a queue
        (between :meth:`enter_queue` and :meth:`leave_queue`): the check and the event are one
        step under the job's lock, so a place announced late by a submitting thread can never
        follow the worker's ``started``.
        """
        with self._changed:
            if position == self.position or (position > 0 and not self._waiting):
                return
            self.position = position
            if position <= 0:
                return
            event, listeners = self._record("queued", {"position": position})
        self._tell(listeners, event)

    def enter_queue(self) -> None:
        """The queue took the job in (called under the queue's lock): its places are announced from now on."""
        with self._changed:
            self._waiting = True

    def leave_queue(self) -> None:
        """The worker took the job out to run it: position 0, and later place announcements are ignored."""
        with self._changed:
            self._waiting = False
            self.position = 0

    # --- control -----------------------------------------------------------------------

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

    # --- progress ----------------------------------------------------------------------

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
            data = {"step": step_index, "steps": self.total_steps, "image": self.image_index,
                    "images": self.total_images}
        if preview is not None:
            data["preview"] = True  # the image itself is the job's latest ``preview``, not kept per event
        self.emit("step", **data)

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
                "status": self.status,
                "position": self.position,
            }

    def progress_text(self) -> str:
        snap = self.snapshot()
        if snap["status"] == "queued" and snap["message"].startswith("waiting: "):
            return "Queued, " + snap["message"]  # the device is held outside the queue (a training run)
        if snap["status"] == "queued" and snap["position"] > 0:
            ahead = snap["position"] - 1
            return ("Queued: starting next" if ahead == 0 else
                    f"Queued: {ahead} job{'s' if ahead != 1 else ''} ahead of yours")
        if not snap["steps"]:
            return snap["message"] or "Waiting…"
        text = (
            f"Image {snap['image'] + 1}/{max(snap['images'], 1)} · step {snap['step']}/{snap['steps']}"
            f" · {snap['elapsed']:.1f}s"
        )
        if snap["message"].startswith("retried: "):  # its worker died; it runs again (Ray backend)
            text += f" · {snap['message']}"
        return text
