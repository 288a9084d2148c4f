"""The public extension API of Easel: the only module an extension imports.

Versioning: ``API_VERSION`` is ``MAJOR.MINOR`` (now 2.0). A minor version only adds (hooks,
fields, helpers, members): an extension written for 2.0 works unchanged on every 2.x. A major
version may remove or change. An extension sets ``EASEL_API_VERSION = "2.0"`` at module level:
it then loads on an Easel of the same major version and at least that minor version. A name or
hook that is going away is listed in :data:`DEPRECATED` and warns (``DeprecationWarning``) for
at least one minor version, then goes at the next major version. Extensions that declare API
1.x (or nothing) still load, through a thin adapter: their ``context`` also answers the 1.x
internals (``settings``, ``pipelines``, ``plugins``, ``job_queue()``), each use warning with the
2.0 replacement; the Extensions page says "1.x adapter". Any other version is refused, and the
Extensions page says why. :data:`NAMES_SINCE` / :data:`HOOKS_SINCE` say which version added
each name, member and hook.

API 2.0: hooks and tabs get :class:`ExtensionContext` as ``context`` (``ui.context`` in a
tab), a narrow facade with a method or property for each thing an extension needs: folders
(``models_dir``, ``outputs_dir``, ``data_dir``, ``lora_dir``, ``datasets_dir``,
``training_dir``), settings (``setting``, ``set_setting``), the device (``device``,
``device_lock()``), models (``use_model(name)``, ``loaded_models()``, ``list_models()``, ...),
jobs (``generate``, ``submit``, ``wait_for``, ``cancel``), ``extension_state``, the other
extensions (``call_hook``, ``report_failure``). The app's internals are not reachable through
it. ``LoadedModel.placement_done`` became public: set it in ``configure_pipeline`` when your
extension placed the pipeline on its devices itself (offload). ``EaselContext`` is deprecated.

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

Added in 1.2: ``ExtensionContext.extension_state`` (per-app state of extensions, reachable from
every browser session), :meth:`UIContext.on_page_load` (run a function each time a browser
opens or reloads the page, e.g. to re-attach to a running job) and :func:`training_log_tail`;
``ExtensionContext.model_source(name)`` (a listed model's source: label, family, the UI ``note``)
and ``ExtensionContext.native_size_of(name)`` (the side a model was trained at, e.g. 128 for the
offline demo model, else its family's).

Added in 1.3: one job path and one queue. ``GenerationRequest.task`` (``TASKS``: txt2img,
img2img, inpaint) with A1111's img2img/inpaint fields (images as PNG bytes: ``image_to_png``
/ ``png_to_image``; ``RESIZE_MODES``, ``MASKED_CONTENT``); ``ExtensionContext.generate`` runs any
task through the device's queue and ``ExtensionContext.submit`` queues one and returns its
:class:`Job` (events: ``Job.wait_events``; ``QueueFullError`` when the queue is full); the
family table (``family_spec(name)``, :class:`Family`, ``LoadedModel.spec``) answers every
family question; ``flatten``, ``resize_image`` and ``mask_from_image`` are the image helpers
the img2img tasks use.

Also in 1.3: sending values from one tab to another (the PNG Info tab's "Send to txt2img",
and the "Send to img2img / inpaint / Background" buttons under the galleries:
:meth:`UIContext.send_image_button`):
a tab offers components others may fill with :meth:`UIContext.share_fields`; another tab wires
a button with :meth:`UIContext.send_to`; :func:`resolve_sampler` splits A1111's legacy sampler
names (``"DPM++ 2M Karras"``) into sampler and schedule type; :func:`read_image_text` reads every
text an image carries (PNG text chunks, EXIF UserComment).

Added in 1.4: pluggy calls the hooks (``@hookimpl(wrapper=True)``, ``tryfirst``/``trylast``
work; old-style ``hookwrapper=True`` is refused at load); ``device_in_use`` is ``firstresult``
(``ExtensionContext.call_hook`` then returns the first answer, not a list); a failing
implementation is listed once per (extension, hook) with a count; the hookspecs are typed;
``out_of_memory`` answers may carry ``"settings"`` that apply to the retried job only;
``generation_form.wire_generate`` gives a generation endpoint one ``extras`` dict for the
extension controls (the txt2img and img2img endpoints' signatures no longer change with the
loaded extensions: ``extras={"lora.names": [...]}``);
:data:`NAMES_SINCE` and :data:`HOOKS_SINCE` say which version introduced each name and hook.

Constants: ``API_VERSION`` (this Easel's extension API, ``"MAJOR.MINOR"``); ``TASKS`` (the job
tasks: txt2img, img2img, inpaint); ``RESIZE_MODES`` and ``MASKED_CONTENT`` (A1111's img2img
resize modes and inpaint fill modes, by index); ``FAMILIES`` (the model family names) and
``FAMILY_LABELS`` (family -> label for the UI); ``SAMPLERS`` and ``SCHEDULE_TYPES`` (A1111
sampler and schedule type names); ``MAX_OOM_RETRIES`` (how often one job is retried after
running out of memory); ``LR_SCHEDULERS`` and ``MIXED_PRECISION`` (the training options'
choices); ``LORA_TAG`` (the regular expression of A1111's ``<lora:name:weight>`` prompt tag, API
1.4; :func:`list_lora_files` lists the LoRA files it may name).

Which version introduced a name: an extension that declares ``EASEL_API_VERSION = "1.2"`` may
use every name, member and hook whose entry in :data:`NAMES_SINCE` / :data:`HOOKS_SINCE` is
1.2 or older (a test checks the built-ins against these tables).

Also in 1.4: datasets and captions from the browser (the Train tab's Dataset section uses
only these). :class:`DatasetStore` creates a dataset under ``context.datasets_dir`` from
uploaded images or one ``.zip`` (limits in :class:`UploadLimits`; unsafe archives refused
with a :class:`DatasetError`), lists its images (:class:`DatasetImage`) and edits captions,
deletes images, adds a trigger word, renames and exports a ``.zip``. Captioners:
:func:`captioner_choices` (:class:`CaptionerChoice`: the demo shapes captioner, a tiny
random-weight BLIP, local folders under ``models/Captioning/``, hub ids), :func:`load_captioner`
(a :class:`Captioner`: ``caption(images, progress)``) and :func:`caption_dataset` (prefix,
suffix, keep or overwrite). The offline demo domain: :func:`find_demo_shapes` and
:func:`match_demo_shapes` (:class:`DemoShape`: box, mask, colour, kind, size of each flat
shape in a demo image; the Background tab's demo detector).

Also in 1.4: local models for the browser-only user (the built-in Models page uses only
these). ``ExtensionContext.local_models()`` lists checkpoints, LoRAs and VAEs as
:class:`LocalModel` rows (size, family, SHA-256, :class:`ModelOrigin`);
``ExtensionContext.download_model(source, kind, ...)`` downloads from an https URL or the hub
(progress as :class:`DownloadProgress`, result :class:`DownloadResult`, refusals and
failures as :class:`DownloadError`; ``ExtensionContext.download_policy`` says what is allowed);
``ExtensionContext.export_model(name, ...)`` writes a diffusers folder as one original-layout
``.safetensors`` checkpoint. ``MODEL_KINDS`` names the kinds and their folders. Model lists
of any tab follow new models: a tab registers its dropdown with
:meth:`UIContext.register_model_list`, and a tab that adds models refreshes them all after its
event with :meth:`UIContext.refresh_model_lists_after`. ``TrainConfig.full_output_format``
(``FULL_OUTPUT_FORMATS``) saves a full fine-tune as a diffusers folder, one checkpoint, or both.

Also in 1.4: Easel's own REST API (``/easel/v1``). ``register_api_routes(router, context)``
adds an extension's routes to it; ``register_job_tasks(register)`` adds kinds of jobs
(:class:`JobTask`) that callers submit, poll and cancel like txt2img jobs, kept in the job store
(SQLite under the data folder) and run again after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from webui.config import Setting
from webui.context import EaselContext as _AppContext
from webui.extension_context import ExtensionContext, app_of
from webui.demo_domain import DemoShape, find_demo_shapes, match_demo_shapes
from webui.errors import EaselError, ExtensionError, GenerationError
from webui.generation import prompt_arguments
from webui.hookspecs import PROJECT_NAME
from webui.job_store import JobTask
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
from webui.models_store import MODEL_FOLDERS as MODEL_KINDS
from webui.models_store import LocalModel
from webui.models_store import Origin as ModelOrigin
from webui.outputs import read_image_text, read_infotext, save_image
from webui.pipelines.downloads import DownloadError, DownloadProgress, DownloadResult
from webui.pipelines.families import FAMILIES, FAMILY_LABELS, Family, family_spec
from webui.pipelines.manager import LoadedModel
from webui.pipelines.schedulers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    make_scheduler,
    resolve_sampler,
    samplers_for,
    schedule_types_for,
)
from webui.pipelines.sources import ModelSource
from webui.plugins import API_VERSION
from webui.loras import LORA_TAG, list_lora_files
from webui.queue import QueueFullError, follow_job
from webui.requirements_check import RequirementStatus, check_requirement, missing as unmet_requirements
from webui.requirements_check import pip_command, pip_command_text
from webui.tasks import flatten, mask_from_image, resize_image
from webui.ui import forms as generation_form
from webui.training.captioners import (
    Captioner,
    CaptionerChoice,
    CaptionReport,
    caption_dataset,
    captioner_choices,
    load_captioner,
)
from webui.training.config import FULL_OUTPUT_FORMATS, LR_SCHEDULERS, MIXED_PRECISION, TrainConfig
from webui.training.config import ConfigError as TrainingConfigError
from webui.training.datasets import DatasetError, DatasetImage, DatasetStore, UploadLimits, UploadReport
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


def _selected_index(event: Any) -> int:
    """The index a Gallery ``select`` event names (Gradio passes it as ``gr.SelectData``)."""
    index = getattr(event, "index", 0)
    return index if isinstance(index, int) else 0


def picked_file(value: Any, index: Any = 0) -> str | None:
    """The file path behind an Image/Gallery value (item ``index`` of a Gallery, else the first), or None
    when the value holds no file (a picture made in memory)."""
    if isinstance(value, list):
        if not value:
            return None
        item = value[index] if isinstance(index, int) and 0 <= index < len(value) else value[0]
        return picked_file(item[0] if isinstance(item, (tuple, list)) else item)
    if isinstance(value, dict):
        return picked_file(value.get("path") or value.get("image") or value.get("name"))
    if isinstance(value, str):
        return value
    path = getattr(value, "path", None) or getattr(value, "filename", None)
    return str(path) if path else None


def picked_image(value: Any, index: Any = 0) -> Any:
    """The PIL image in an Image/Gallery value: a PIL image, an array, a file path, or a Gallery list
    of ``(image, caption)`` items (item ``index``, else the first)."""
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, list):
        if not value:
            return None
        item = value[index] if isinstance(index, int) and 0 <= index < len(value) else value[0]
        return picked_image(item[0] if isinstance(item, (tuple, list)) else item)
    if isinstance(value, dict):
        return picked_image(value.get("composite") or value.get("background") or value.get("path")
                            or value.get("image"))
    if isinstance(value, Image.Image):
        return value
    if hasattr(value, "shape"):
        return Image.fromarray(value)
    if isinstance(value, str):
        with Image.open(value) as opened:
            opened.load()
            return opened.copy()
    return None


@dataclass
class UIContext:
    """What a tab's ``render`` gets: the app context plus UI helpers."""

    context: ExtensionContext
    """The app as extensions see it (API 2.0: :class:`ExtensionContext`; 1.x extensions get its adapter)."""
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

        self.context.call_hook("register_generation_controls", register=register, tab_id=tab_id)
        rendered = []
        for control in sorted(controls, key=lambda c: (c.order, c.key)):
            try:
                rendered.append((control.key, control.render(self)))
            except Exception as exc:  # noqa: BLE001 - one broken control must not break the tab
                self.context.report_failure(control.key, "render", exc)
        return rendered

    def __post_init__(self) -> None:
        self.context = self.context.for_extensions  # built from the app context: tabs still get the facade

    _shared: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _sends: list[tuple[Any, str, Callable[..., Any], list[Any]]] = field(default_factory=list, init=False,
                                                                        repr=False)
    tabs: Any = field(default=None, repr=False)
    """The shell's ``gr.Tabs`` (set by the shell); :meth:`send_to` selects the target tab through it."""

    def share_fields(self, tab_id: str, fields: dict[str, Any]) -> None:
        """Offer components of tab ``tab_id`` that other tabs may fill with :meth:`send_to`. API 1.3.

        ``fields`` maps a field name to a component. txt2img shares ``prompt``,
        ``negative_prompt``, ``model``, ``sampler``, ``schedule_type``, ``steps``, ``cfg_scale``,
        ``seed``, ``width`` and ``height``. Calling it again adds to (or replaces) fields.
        """
        self._shared.setdefault(tab_id, {}).update(fields)

    def shared_fields(self, tab_id: str) -> dict[str, Any]:
        """The components tab ``tab_id`` shared so far (empty when none)."""
        return dict(self._shared.get(tab_id, {}))

    def send_to(self, tab_id: str, button: Any, fn: Callable[..., dict[str, Any]], inputs: Any = None) -> None:
        """Make ``button`` send values to tab ``tab_id`` and switch to it. API 1.3.

        ``fn(*inputs)`` returns ``{field: value}``; each value goes into the component the
        target shared under that name (:meth:`share_fields`); fields it did not share, and
        shared fields left out of the dict, are left as they are. ``None`` sends nothing and
        stays on the tab. The wiring is done once every tab is rendered, so the target may come
        before or after the sending tab. When the target shares nothing (its extension is
        disabled or failed) the button is hidden.
        """
        inputs = [] if inputs is None else list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        self._sends.append((button, tab_id, fn, inputs))

    def finish_rendering(self) -> None:
        """Wire the :meth:`send_to` buttons and the model-list refreshes (the shell calls this after
        every tab rendered)."""
        import gradio as gr

        self._wire_model_list_refreshes()

        for button, tab_id, fn, inputs in self._sends:
            targets = self.shared_fields(tab_id)
            if not targets:
                button.visible = False
                continue
            names = list(targets)

            def send(*values: Any, fn=fn, names=names, tab_id=tab_id) -> list[Any]:
                chosen = fn(*values)
                if chosen is None:  # nothing to send: stay here
                    return [gr.skip()] * (len(names) + (self.tabs is not None))
                updates = [gr.update(value=chosen[name]) if name in chosen else gr.skip() for name in names]
                return updates + ([gr.Tabs(selected=tab_id)] if self.tabs is not None else [])

            outputs = [targets[name] for name in names] + ([self.tabs] if self.tabs is not None else [])
            button.click(send, inputs=inputs, outputs=outputs, api_name=False, queue=False)
        self._sends.clear()

    def send_image_button(self, tab_id: str, field_name: str, source: Any, label: str, *, as_file: bool = False,
                          **button_options: Any) -> Any:
        """A "Send to ..." button: the image shown in ``source`` (a Gallery's selected image, else its
        first; or an Image) goes into the component tab ``tab_id`` shared as ``field_name``, and that
        tab opens. API 1.3. Built on :meth:`send_to`; returns the button.

        ``as_file`` (API 1.4): send the image's file path instead of the decoded picture, so
        the file arrives as it is served, text chunks included (PNG Info's ``file`` field).
        Shared image fields of the built-in tabs: ``img2img``: ``init_image`` and
        ``inpaint_image``; ``background``: ``image``; ``png_info``: ``file`` (with ``as_file``).
        """
        import gradio as gr

        button = gr.Button(label, size="sm", **button_options)
        inputs = [source]
        if isinstance(source, gr.Gallery):
            selected = gr.State(0)

            def remember_selection(event):
                return _selected_index(event)

            remember_selection.__annotations__ = {"event": gr.SelectData}  # Gradio passes the event by its type
            source.select(remember_selection, inputs=None, outputs=selected, api_name=False, queue=False)
            inputs.append(selected)

        def pick(value: Any, index: Any = 0) -> dict[str, Any]:
            image = picked_file(value, index) if as_file else picked_image(value, index)
            if image is None:
                raise gr.Error("There is no image to send yet", print_exception=False)
            return {field_name: image}

        self.send_to(tab_id, button, pick, inputs)
        return button

    _model_lists: list[tuple[Any, Callable[[], list[Any]]]] = field(default_factory=list, init=False, repr=False)
    _refresh_events: list[Any] = field(default_factory=list, init=False, repr=False)

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        """``(label, name)`` of every model a user can pick (what the model dropdowns list). API 1.4."""
        return [(source.display_name, source.name) for source in self.context.list_models()]

    def register_model_list(self, component: Any, choices: Callable[[], list[Any]] | None = None) -> Any:
        """Keep the dropdown ``component`` up to date when models arrive (a download or an export on
        the Models page). API 1.4.

        ``choices()`` returns its new choices (default: :meth:`checkpoint_choices`, the models
        txt2img lists); the dropdown keeps its value when that is still listed. Returns ``component``.
        """
        self._model_lists.append((component, choices or self.checkpoint_choices))
        return component

    def refresh_model_lists_after(self, event: Any) -> None:
        """After the Gradio event ``event`` (what ``button.click(...)`` or ``.then(...)`` returns) ends,
        refresh every dropdown registered with :meth:`register_model_list`, in every tab. API 1.4.

        Wired once every tab is rendered, so lists of tabs rendered later are included.
        """
        self._refresh_events.append(event)

    def _wire_model_list_refreshes(self) -> None:
        import gradio as gr

        if not self._model_lists:
            self._refresh_events.clear()
            return
        components = [component for component, _ in self._model_lists]
        makers = [choices for _, choices in self._model_lists]

        def refresh(*current: Any) -> list[Any]:
            """New choices for every list; each keeps its value while that is still listed."""
            updates = []
            for value, choices_of in zip(current, makers):
                choices = choices_of()
                names = {c[1] if isinstance(c, (tuple, list)) else c for c in choices}
                updates.append(gr.update(choices=choices, value=value) if value in names
                               else gr.update(choices=choices))
            return updates

        for event in self._refresh_events:
            event.then(refresh, inputs=components, outputs=components, api_name=False, queue=False)
        self._refresh_events.clear()

    def last_used(self, scope: str) -> dict[str, Any]:
        """The values this tab saved with :meth:`remember` (empty on first start)."""
        return app_of(self.context).settings.last_used(scope)

    def remember(self, scope: str, values: dict[str, Any]) -> None:
        """Save this tab's current values so they come back after a restart."""
        app_of(self.context).settings.remember(scope, values)


#: The API version that introduced each public name of this module and each public member of
#: its classes (``"Class.member"``; members not listed came with their class). An extension
#: declaring ``EASEL_API_VERSION`` older than a name's entry must not use that name.
NAMES_SINCE: dict[str, str] = {
    # 1.0: the spine
    **dict.fromkeys([
        "API_VERSION", "Control", "EaselError", "ExtensionError", "FAMILIES", "FAMILY_LABELS",
        "GenerationError", "GenerationRequest", "GenerationResult", "ImageRecord", "Job", "LoadedModel",
        "ModelSource", "RefinerOptions", "RequestError", "SAMPLERS", "SCHEDULE_TYPES", "Setting", "Tab",
        "UIContext", "build_infotext", "hookimpl", "make_scheduler", "parse_infotext", "prompt_arguments",
        "read_infotext", "resolve_seed", "samplers_for", "schedule_types_for", "save_image",
        # LoRA training, public since the Train tab came (API 1.0)
        "LR_SCHEDULERS", "MIXED_PRECISION", "TrainConfig", "TrainingConfigError", "TrainingProcess",
        "read_training_events", "ExtensionContext.lora_dir", "ExtensionContext.datasets_dir", "ExtensionContext.training_dir",
        "ExtensionContext.list_models", "ExtensionContext.family_of", "ExtensionContext.extensions",
        "UIContext.render_generation_controls", "UIContext.last_used", "UIContext.remember", "UIContext.context",
        "ExtensionContext.models_dir", "ExtensionContext.outputs_dir", "ExtensionContext.data_dir",
        "ExtensionContext.default_model", "ExtensionContext.max_side",
        "LoadedModel.name", "LoadedModel.family", "LoadedModel.pipeline", "LoadedModel.device", "LoadedModel.dtype",
        "LoadedModel.source", "LoadedModel.base_scheduler_config", "LoadedModel.extension_state",
        "LoadedModel.model_hash",
        *(f"GenerationRequest.{name}" for name in (
            "prompt", "negative_prompt", "model", "steps", "cfg_scale", "width", "height", "seed", "batch_count",
            "batch_size", "sampler", "schedule_type", "refiner", "save", "extras")),
    ], "1.0"),
    # 1.1: memory options
    **dict.fromkeys([
        "MAX_OOM_RETRIES", "denoiser_of", "device_memory", "format_size", "is_available", "module_bytes",
        "option_availability", "option_value", "parse_size", "pipeline_modules",
        "ExtensionContext.call_hook", "ExtensionContext.extension_infotext_fields", "ExtensionContext.extension_call_kwargs",
        "ExtensionContext.out_of_memory_answers",
    ], "1.1"),
    # 1.2: per-app extension state, page loads, model sources
    **dict.fromkeys([
        "training_log_tail", "ExtensionContext.extension_state", "ExtensionContext.model_source",
        "ExtensionContext.native_size_of", "UIContext.on_page_load",
    ], "1.2"),
    # 1.3: one job path, one queue, the family table, sending between tabs
    **dict.fromkeys([
        "Family", "MASKED_CONTENT", "QueueFullError", "RESIZE_MODES", "TASKS", "family_spec", "flatten",
        "follow_job", "generation_form", "image_to_png", "mask_from_image", "picked_image", "png_to_image",
        "read_image_text", "resize_image", "resolve_sampler",
        "ExtensionContext.generate", "ExtensionContext.submit", "ExtensionContext.device_in_use",
        "LoadedModel.spec", "UIContext.share_fields", "UIContext.shared_fields", "UIContext.send_to",
        "UIContext.send_image_button",
        *(f"generation_form.{name}" for name in (
            "model_choices", "model_note", "all_samplers", "ModelPicker", "render_model_picker", "render_prompt_row",
            "Sampling", "render_sampling", "render_size", "render_batch", "Outputs", "render_outputs",
            "render_send_buttons", "wire_model_follow", "job_updates", "stop_job", "wire_stop_buttons")),
        *(f"GenerationRequest.{name}" for name in (
            "task", "init_image", "mask", "denoising_strength", "resize_mode", "mask_blur", "inpainting_fill",
            "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "infotext_extra")),
    ], "1.3"),
    # 1.4: pluggy calls the hooks; the version tables
    **dict.fromkeys(["NAMES_SINCE", "HOOKS_SINCE", "generation_form.wire_generate", "generation_form.extras_value",
                     "ExtensionContext.setting", "ExtensionContext.set_setting", "ExtensionContext.device",
                     "ExtensionContext.device_lock", "ExtensionContext.extension_failures", "ExtensionContext.extension_install_allowed",
                     # datasets and captions from the browser
                     "CaptionReport", "Captioner", "CaptionerChoice", "DatasetError", "DatasetImage", "DatasetStore",
                     "DemoShape", "find_demo_shapes", "match_demo_shapes", "UploadLimits", "UploadReport",
                     "caption_dataset", "captioner_choices", "load_captioner",
                     # local models, downloads, export
                     "DownloadError", "DownloadProgress", "DownloadResult", "LocalModel", "MODEL_KINDS", "ModelOrigin",
                     "FULL_OUTPUT_FORMATS", "ExtensionContext.local_models", "ExtensionContext.download_model",
                     "ExtensionContext.export_model", "ExtensionContext.download_policy", "UIContext.register_model_list",
                     "UIContext.refresh_model_lists_after",
                     # extensions' declared requirements
                     "RequirementStatus", "check_requirement", "unmet_requirements", "pip_command", "pip_command_text",
                     # Easel's own REST API
                     "JobTask", "picked_file", "LORA_TAG", "list_lora_files"],
                    "1.4"),
    # 2.0: the narrow context facade; the 1.x adapter
    **dict.fromkeys(["ExtensionContext", "DEPRECATED", "ExtensionContext.use_model", "ExtensionContext.loaded_models",
                     "ExtensionContext.wait_for", "ExtensionContext.cancel", "ExtensionContext.report_failure",
                     "ExtensionContext.for_extensions", "LoadedModel.placement_done"], "2.0"),
}

#: Names API 2.0 deprecates: name -> (the version that deprecated it, what to use instead). Using
#: one warns (``DeprecationWarning``); it goes with the next major version.
DEPRECATED: dict[str, tuple[str, str]] = {
    "EaselContext": ("2.0", "ExtensionContext (what hooks and tabs get as context)"),
}


def __getattr__(name: str) -> Any:
    """Deprecated names still answer, with a ``DeprecationWarning`` naming their replacement."""
    if name in DEPRECATED:
        import warnings

        since, replacement = DEPRECATED[name]
        warnings.warn(f"webui.api.{name} is deprecated since API {since}; use {replacement}", DeprecationWarning,
                      stacklevel=2)
        return {"EaselContext": _AppContext}[name]
    raise AttributeError(f"module 'webui.api' has no attribute {name!r}")

#: The API version that introduced each hook of :mod:`webui.hookspecs`.
HOOKS_SINCE: dict[str, str] = {
    **dict.fromkeys(["register_settings", "register_tabs", "register_generation_controls", "app_started",
                     "configure_pipeline", "before_generation", "pipeline_call_kwargs", "after_generation",
                     "infotext_fields"], "1.0"),
    **dict.fromkeys(["option_availability", "out_of_memory", "preset_values"], "1.1"),
    "device_in_use": "1.3",
    **dict.fromkeys(["register_api_routes", "register_job_tasks"], "1.4"),
}


__all__ = [
    "API_VERSION",
    "RequirementStatus",
    "check_requirement",
    "unmet_requirements",
    "picked_file",
    "LORA_TAG",
    "list_lora_files",
    "pip_command",
    "pip_command_text",
    "HOOKS_SINCE",
    "NAMES_SINCE",
    "CaptionReport",
    "Captioner",
    "CaptionerChoice",
    "DatasetError",
    "DatasetImage",
    "DatasetStore",
    "DemoShape",
    "find_demo_shapes",
    "match_demo_shapes",
    "UploadLimits",
    "UploadReport",
    "caption_dataset",
    "captioner_choices",
    "load_captioner",
    "Control",
    "DownloadError",
    "DownloadProgress",
    "DownloadResult",
    "LocalModel",
    "MODEL_KINDS",
    "ModelOrigin",
    "ExtensionContext",
    "DEPRECATED",
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
    "generation_form",
    "picked_image",
    "follow_job",
    "image_to_png",
    "mask_from_image",
    "png_to_image",
    "resize_image",
    "GenerationError",
    "FULL_OUTPUT_FORMATS",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "GenerationRequest",
    "GenerationResult",
    "ImageRecord",
    "Job",
    "JobTask",
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
    "read_image_text",
    "read_infotext",
    "resolve_sampler",
    "read_training_events",
    "training_log_tail",
    "resolve_seed",
    "samplers_for",
    "schedule_types_for",
    "save_image",
]
