"""The public extension API of Easel: the only module an extension imports.

Versioning: ``API_VERSION`` is ``MAJOR.MINOR``. A minor bump only adds (hooks, fields,
helpers); a major bump may remove or change. An extension may set
``EASEL_API_VERSION = "1.0"`` at module level: it then loads only on an Easel with the
same major version and at least that minor version. Anything deprecated stays for one
minor version with a ``DeprecationWarning`` before it goes at the next major version.

A minimal extension (a folder under ``extensions/`` with this ``__init__.py``)::

    '''Adds a field to every image's infotext.'''
    from webui.api import hookimpl

    @hookimpl
    def infotext_fields(request, model):
        '''Record the model family.'''
        return {"Family": model.family}

Hooks, with their contracts, are documented in :mod:`webui.hookspecs`.

LoRA training is public too (the built-in Train tab uses only this): :class:`TrainConfig` (the
JSON config ``python -m webui.train`` reads), :class:`TrainingProcess` (starts ``accelerate
launch`` in a child process, Cancel, log tail), :func:`read_training_events` (the trainer's
``progress.jsonl``), :func:`training_log_tail` (the end of its ``train.log``),
``TrainingConfigError``, ``LR_SCHEDULERS``, ``MIXED_PRECISION``; the context's ``lora_dir``,
``datasets_dir`` and ``training_dir`` name the folders.

Added in 1.2: ``EaselContext.extension_state`` (per-app state of extensions, reachable from
every browser session), :meth:`UIContext.on_page_load` (run a function each time a browser
opens or reloads the page, e.g. to re-attach to a running job) and :func:`training_log_tail`;
``EaselContext.model_source(name)`` (a listed model's source: label, family, the UI ``note``)
and ``EaselContext.native_size_of(name)`` (the side a model was trained at, e.g. 128 for the
offline demo model, else its family's).

Added in 1.3: one job path and one queue. ``GenerationRequest.task`` (``TASKS``: txt2img,
img2img, inpaint) with A1111's img2img/inpaint fields (images as PNG bytes: ``image_to_png``
/ ``png_to_image``; ``RESIZE_MODES``, ``MASKED_CONTENT``); ``EaselContext.generate`` runs any
task through the device's queue and ``EaselContext.submit`` queues one and returns its
:class:`Job` (events: ``Job.wait_events``; ``QueueFullError`` when the queue is full); the
family table (``family_spec(name)``, :class:`Family`, ``LoadedModel.spec``) answers every
family question; ``flatten``, ``resize_image`` and ``mask_from_image`` are the image helpers
the img2img tasks use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from webui.config import Setting
from webui.context import EaselContext
from webui.errors import EaselError, ExtensionError, GenerationError
from webui.generation import prompt_arguments
from webui.hookspecs import PROJECT_NAME
from webui.infotext import build_infotext, parse_infotext
from webui.memory import (
    MAX_OOM_RETRIES,
    denoiser_of,
    device_memory,
    format_size,
    is_available,
    module_bytes,
    option_availability,
    option_value,
    parse_size,
    pipeline_modules,
)
from webui.jobs import (
    MASKED_CONTENT,
    RESIZE_MODES,
    TASKS,
    GenerationRequest,
    GenerationResult,
    ImageRecord,
    Job,
    RefinerOptions,
    RequestError,
    image_to_png,
    png_to_image,
    resolve_seed,
)
from webui.outputs import read_infotext, save_image
from webui.pipelines.families import FAMILIES, FAMILY_LABELS, Family, family_spec
from webui.pipelines.manager import LoadedModel
from webui.pipelines.schedulers import SAMPLERS, SCHEDULE_TYPES, make_scheduler, samplers_for, schedule_types_for
from webui.pipelines.sources import ModelSource
from webui.plugins import API_VERSION
from webui.queue import QueueFullError
from webui.tasks import flatten, mask_from_image, resize_image
from webui.training.config import LR_SCHEDULERS, MIXED_PRECISION, TrainConfig
from webui.training.config import ConfigError as TrainingConfigError
from webui.training.launch import TrainingProcess
from webui.training.launch import log_tail as training_log_tail
from webui.training.launch import read_events as read_training_events

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass
class Tab:
    """A top-level UI tab registered through the ``register_tabs`` hook.

    ``render(ui)`` is called inside the tab with a :class:`UIContext` and creates the
    Gradio components. Lower ``order`` comes first.
    """

    id: str
    label: str
    render: Callable[["UIContext"], None]
    order: int = 100


@dataclass
class Control:
    """A control an extension adds to a generation tab (``register_generation_controls``).

    ``key`` names the entry of ``request.extras`` that receives the component's value
    (prefix it with your extension's name); ``render(ui)`` creates and returns one Gradio
    component. Lower ``order`` comes first.
    """

    key: str
    render: Callable[["UIContext"], Any]
    order: int = 100


@dataclass
class UIContext:
    """What a tab's ``render`` gets: the app context plus UI helpers."""

    context: EaselContext
    blocks: Any = field(default=None, repr=False)
    """The ``gr.Blocks`` being built (set by the shell); use :meth:`on_page_load` rather than this."""

    def on_page_load(self, fn: Callable[..., Any], *, inputs: Any = None, outputs: Any = None,
                     **event_options: Any) -> Any:
        """Run ``fn`` each time a browser opens or reloads the page (Gradio's ``Blocks.load``). API 1.2.

        For a tab whose state outlives one page: a reloaded page (or a second browser) gets
        the current state instead of empty outputs, and a generator ``fn`` keeps streaming
        it (re-attaching to a running job). ``inputs``/``outputs`` are as in any Gradio event;
        ``event_options`` are Gradio event options (``api_name``, ``concurrency_limit``,
        ``show_progress``, ...). A long-running ``fn`` should set ``concurrency_limit=None``
        or its own ``concurrency_id``, or open pages would use up the app's default limit.
        Returns Gradio's event dependency. Only while the shell builds the UI (inside ``render``).
        """
        if self.blocks is None:
            raise RuntimeError("on_page_load is available only while Easel builds its UI (inside a tab's render)")
        return self.blocks.load(fn, inputs=inputs, outputs=outputs, **event_options)

    def render_generation_controls(self, tab_id: str) -> list[tuple[str, Any]]:
        """Render the controls extensions registered for ``tab_id``; returns ``(key, component)`` pairs.

        A control whose ``render`` raises is reported on the Extensions page and left out.
        """
        controls: list[Control] = []

        def register(control: Control) -> None:
            if not isinstance(control, Control):
                raise TypeError(f"register_generation_controls expects webui.api.Control, got {type(control)}")
            controls.append(control)

        self.context.plugins.call("register_generation_controls", register=register, tab_id=tab_id)
        rendered = []
        for control in sorted(controls, key=lambda c: (c.order, c.key)):
            try:
                rendered.append((control.key, control.render(self)))
            except Exception as exc:  # noqa: BLE001 - one broken control must not break the tab
                self.context.plugins.report_failure(control.key, "render", exc)
        return rendered

    def last_used(self, scope: str) -> dict[str, Any]:
        """The values this tab saved with :meth:`remember` (empty on first start)."""
        return self.context.settings.last_used(scope)

    def remember(self, scope: str, values: dict[str, Any]) -> None:
        """Save this tab's current values so they come back after a restart."""
        self.context.settings.remember(scope, values)


__all__ = [
    "API_VERSION",
    "Control",
    "EaselContext",
    "EaselError",
    "ExtensionError",
    "FAMILIES",
    "FAMILY_LABELS",
    "Family",
    "MASKED_CONTENT",
    "QueueFullError",
    "RESIZE_MODES",
    "TASKS",
    "family_spec",
    "flatten",
    "image_to_png",
    "mask_from_image",
    "png_to_image",
    "resize_image",
    "GenerationError",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "GenerationRequest",
    "GenerationResult",
    "ImageRecord",
    "Job",
    "LoadedModel",
    "MAX_OOM_RETRIES",
    "ModelSource",
    "RefinerOptions",
    "RequestError",
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "Setting",
    "Tab",
    "TrainConfig",
    "TrainingConfigError",
    "TrainingProcess",
    "UIContext",
    "build_infotext",
    "denoiser_of",
    "device_memory",
    "format_size",
    "is_available",
    "module_bytes",
    "option_availability",
    "option_value",
    "parse_size",
    "pipeline_modules",
    "hookimpl",
    "make_scheduler",
    "parse_infotext",
    "prompt_arguments",
    "read_infotext",
    "read_training_events",
    "training_log_tail",
    "resolve_seed",
    "samplers_for",
    "schedule_types_for",
    "save_image",
]
