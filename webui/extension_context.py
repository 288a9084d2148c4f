"""What an extension gets as ``context``: a narrow facade over the running app (API 2.0).

:class:`ExtensionContext` has a method or a read-only property for each thing an extension
needs: the folders, setting values, the device and its lock, using a model, submitting and
following jobs, per-app extension state, the model lists, downloads and exports, the other
extensions' hooks. The app's internals (the settings store, the pipeline manager, the plugin
host, the queue object) are not reachable through its public attributes, so the core can
change them without breaking an extension.

Extensions written for API 1.x reached those internals (``context.settings``,
``context.pipelines``, ``context.plugins``, ``context.job_queue()``). They are loaded through
:class:`LegacyContext`, a thin adapter that answers those names too, with a
``DeprecationWarning`` naming the 2.0 replacement (see ``docs/extensions.md``, "Versions").

:func:`app_of` is for Easel's own core code only (not part of ``webui.api``): it returns the
app context behind a facade.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from webui.context import EaselContext
    from webui.jobs import GenerationRequest, GenerationResult, Job
    from webui.models_store import LocalModel
    from webui.pipelines.downloads import DownloadPolicy, DownloadResult, ProgressCallback
    from webui.pipelines.manager import LoadedModel
    from webui.pipelines.sources import ModelSource
    from webui.plugins import ExtensionFailure, ExtensionInfo


class ExtensionContext:
    """The running app as an extension sees it (API 2.0): folders, settings, device, models, jobs.

    Hooks that take a ``context`` argument and tabs (``ui.context``) get this object. It holds
    no state of its own; two apps in one process have two of them.
    """

    __slots__ = ("_app",)

    def __init__(self, app: "EaselContext") -> None:
        self._app = app

    def __repr__(self) -> str:
        return f"<ExtensionContext models={self.models_dir} outputs={self.outputs_dir}>"

    @property
    def for_extensions(self) -> "ExtensionContext":
        """This facade itself (the app context answers its facade here): what hooks are given."""
        return self

    # --- folders -----------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        """The models folder (A1111 layout: ``Stable-diffusion/``, ``Lora/``, ``VAE/``, ...)."""
        return self._app.models_dir

    @property
    def outputs_dir(self) -> Path:
        """Where images are saved (``<outputs>/<task>/<date>/``)."""
        return self._app.outputs_dir

    @property
    def data_dir(self) -> Path:
        """The app's data folder (settings, job records, datasets, training runs)."""
        return self._app.data_dir

    @property
    def lora_dir(self) -> Path:
        """Where LoRA files live and trained LoRAs are written (``<models>/Lora``)."""
        return self._app.lora_dir

    @property
    def datasets_dir(self) -> Path:
        """The only folder training takes datasets from (``<data-dir>/datasets``)."""
        return self._app.datasets_dir

    @property
    def training_dir(self) -> Path:
        """Run folders of training jobs: checkpoints, logs, progress (``<data-dir>/training``)."""
        return self._app.training_dir

    # --- how the app was started -------------------------------------------------------

    @property
    def default_model(self) -> str:
        """The model a new job uses when it names none."""
        return self._app.default_model

    @property
    def max_side(self) -> int:
        """The largest image side a job may ask for (``--max-size``)."""
        return self._app.max_side

    @property
    def extension_install_allowed(self) -> bool:
        """Whether the Extensions page may run pip for missing requirements (a localhost server, or
        ``--allow-extension-install``)."""
        return self._app.extension_install_allowed

    @property
    def download_policy(self) -> "DownloadPolicy | None":
        """What :meth:`download_model` may fetch; None: localhost only, safetensors only."""
        return self._app.download_policy

    @property
    def extension_state(self) -> dict[str, Any]:
        """Per-app state of extensions, one entry per extension under its own name.

        For objects that must outlive one page or session but not the app (a running training
        process every browser session must reach): ``context.extension_state.setdefault("myext", {})``
        rather than module-level globals. Not saved across restarts; for that use
        :meth:`webui.api.UIContext.remember` or a setting.
        """
        return self._app.extension_state

    # --- settings ----------------------------------------------------------------------

    def setting(self, key: str, default: Any = None) -> Any:
        """The value of setting ``key``: the saved value, else its default, else ``default``.

        Inside a job this is the job's value (a job retried after running out of memory may run
        under a lower memory profile than the app's setting).
        """
        return self._app.setting(key, default)

    def set_setting(self, key: str, value: Any) -> Any:
        """Validate and save setting ``key``; returns the stored value, raises ValueError."""
        return self._app.set_setting(key, value)

    # --- the device and models ---------------------------------------------------------

    @property
    def device(self) -> Any:
        """The ``torch.device`` the app's jobs run on."""
        return self._app.device

    def device_lock(self) -> Any:
        """The lock held while something uses the app's device; hold it for your own model work
        outside the job queue (``with context.device_lock(): ...``)."""
        return self._app.device_lock()

    @contextmanager
    def use_model(self, name: str) -> Iterator["LoadedModel"]:
        """Hold the device and lend the loaded model ``name`` (loading it if needed) (API 2.0).

        ``with context.use_model(name) as model: model.pipeline(...)``. For an extension's own
        work with a listed model outside the job queue; image jobs go through :meth:`generate`.
        """
        with self._app.pipelines.use(name) as model:
            yield model

    def loaded_models(self) -> list[str]:
        """The names of the models loaded right now (API 2.0)."""
        return self._app.pipelines.loaded_names()

    def list_models(self) -> list["ModelSource"]:
        """Every model a user can pick: built-ins, local files and folders, hub presets."""
        return self._app.list_models()

    def family_of(self, name: str) -> str | None:
        """The family of a listed model (``sd1``, ``sdxl``, ...) or None when it cannot be told yet."""
        return self._app.family_of(name)

    def model_source(self, name: str) -> "ModelSource | None":
        """The listed source called ``name`` (None for names that are not listed, e.g. hub ids)."""
        return self._app.model_source(name)

    def native_size_of(self, name: str) -> int | None:
        """The image side a model was trained at (its own, else its family's), None when unknown."""
        return self._app.native_size_of(name)

    def local_models(self, compute_hashes: bool = True) -> list["LocalModel"]:
        """Every local checkpoint, LoRA and VAE with size, family, SHA-256 and origin."""
        return self._app.local_models(compute_hashes)

    def download_model(self, source: str, kind: str = "checkpoint", *, filename: str | None = None,
                       sha256: str | None = None, progress: "ProgressCallback | None" = None) -> "DownloadResult":
        """Download a model into the folder of ``kind`` (``checkpoint``, ``lora``, ``vae``).

        ``source`` is an ``https://`` URL (``filename`` optionally names the file) or a hub id
        ``owner/name`` (with ``filename``: that one file; without: the whole diffusers repository).
        ``sha256``, when given, must match or the download is removed. ``progress`` gets a
        :class:`webui.api.DownloadProgress` after every chunk. :attr:`download_policy` decides
        what is allowed; refusals and failures raise :class:`webui.api.DownloadError`.
        """
        return self._app.download_model(source, kind, filename=filename, sha256=sha256, progress=progress)

    def export_model(self, name: str, output_name: str = "", half: bool = False) -> Path:
        """Export a listed diffusers-folder model as one original-layout ``.safetensors`` checkpoint."""
        return self._app.export_model(name, output_name, half)

    # --- jobs --------------------------------------------------------------------------

    def generate(self, request: "GenerationRequest", job: "Job | None" = None) -> "GenerationResult":
        """Run an image job of any task through the queue and wait for its result.

        Raises what the job raised (:class:`webui.api.RequestError`, ...) or
        :class:`webui.api.QueueFullError` when the queue is full.
        """
        return self._app.generate(request, job)

    def submit(self, request: "GenerationRequest", job: "Job | None" = None) -> "Job":
        """Queue an image job and return its :class:`webui.api.Job` at once; follow its events
        (``job.wait_events``), :meth:`wait_for` its result, :meth:`cancel` it."""
        return self._app.submit(request, job)

    def wait_for(self, job: "Job", timeout: float | None = None) -> "GenerationResult":
        """Block until a submitted ``job`` ends; its result, or the error that ended it (API 2.0)."""
        return self._app.wait_for(job, timeout)

    def cancel(self, job: "Job") -> str:
        """Cancel a waiting job (returns ``"cancelled"``) or interrupt a running one
        (``"interrupted"``); what a running job finished is kept (API 2.0)."""
        return self._app.cancel(job)

    def device_in_use(self) -> str | None:
        """Why the queue's device is held outside the queue right now (``device_in_use`` hooks), or None."""
        return self._app.device_in_use()

    # --- other extensions ----------------------------------------------------------------

    def call_hook(self, name: str, **kwargs: Any) -> Any:
        """Call hook ``name`` (see :mod:`webui.hookspecs`) on every enabled extension.

        For extensions that run their own jobs and want the per-job hooks (``before_generation``,
        ``pipeline_call_kwargs``, ``infotext_fields``, ``after_generation``, ``out_of_memory``) to
        apply as in txt2img. Pass the hook's arguments by name; returns the implementations'
        non-None results (for a ``firstresult`` hook such as ``device_in_use``: the first answer,
        or None). An implementation that raises is reported and skipped, except
        :class:`webui.api.ExtensionError`, which propagates.
        """
        return self._app.call_hook(name, **kwargs)

    def extension_infotext_fields(self, request: "GenerationRequest", model: "LoadedModel") -> dict:
        """Every extension's ``infotext_fields`` for this job, merged."""
        return self._app.extension_infotext_fields(request, model)

    def extension_call_kwargs(self, request: "GenerationRequest", model: "LoadedModel") -> dict:
        """Every extension's ``pipeline_call_kwargs`` for this job, merged (later extensions win)."""
        return self._app.extension_call_kwargs(request, model)

    def out_of_memory_answers(self, request: "GenerationRequest", model: "LoadedModel",
                              error: BaseException) -> tuple[list, bool]:
        """Free the device memory and ask the ``out_of_memory`` hooks: (advice sentences, retry wanted)."""
        return self._app.out_of_memory_answers(request, model, error)

    def extensions(self) -> list["ExtensionInfo"]:
        """What is loaded, disabled or failed, for the Extensions page."""
        return self._app.extensions()

    def extension_failures(self) -> list["ExtensionFailure"]:
        """Every failing (extension, stage) pair with its count, for the Extensions page."""
        return self._app.extension_failures()

    def report_failure(self, extension: str, stage: str, error: BaseException) -> None:
        """Record a failure of ``extension`` that happened outside a hook call (a part of a tab that
        could not render, a background thread): shown once on the Extensions page, with a count (API 2.0)."""
        self._app.plugins.report_failure(extension, stage, error)


#: What a 1.x extension reached through ``context`` that 2.0 answers otherwise.
LEGACY_REPLACEMENTS = {
    "settings": "context.setting(key) / context.set_setting(key, value)",
    "pipelines": "context.use_model(name), context.loaded_models(), context.device_lock()",
    "plugins": "context.call_hook(name, ...), context.report_failure(...)",
    "queue": "context.submit / context.wait_for / context.cancel",
    "job_queue": "context.submit / context.wait_for / context.cancel",
    "recorder": "the REST API (register_api_routes, register_job_tasks)",
    "job_recorder": "the REST API (register_api_routes, register_job_tasks)",
}


class LegacyContext(ExtensionContext):
    """The context an API 1.x extension gets: the 2.0 facade plus the app's attributes it used to
    reach (``settings``, ``pipelines``, ``plugins``, ``job_queue()``, ...), each with a
    ``DeprecationWarning`` that names the 2.0 replacement. Removed with API 3.0."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._app, name)  # AttributeError for names the app does not have either
        replacement = LEGACY_REPLACEMENTS.get(name, "the ExtensionContext methods")
        warnings.warn(f"context.{name} is API 1.x; in API 2.0 use {replacement}", DeprecationWarning, stacklevel=2)
        return value


def app_of(context: Any) -> "EaselContext":
    """The app context behind ``context`` (a facade or the app context itself). Core code only."""
    return context._app if isinstance(context, ExtensionContext) else context


class LegacyUIContext:
    """What an API 1.x extension's tab or control gets as ``ui``: the app's UI context whose
    ``context`` is the 1.x :class:`LegacyContext`; everything else is the UI context's own."""

    __slots__ = ("_ui",)

    def __init__(self, ui: Any) -> None:
        object.__setattr__(self, "_ui", ui)

    @property
    def context(self) -> LegacyContext:
        """The app as API 1.x extensions knew it (deprecated internals included)."""
        return app_of(self._ui.context).legacy_view

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ui, name)


def _legacy_registered(item: Any) -> Any:
    """A tab, control or job task an API 1.x extension registers, handed the 1.x views when called."""
    if not dataclasses.is_dataclass(item) or isinstance(item, type):
        return item
    names = {f.name for f in dataclasses.fields(item)}
    if "render" in names and callable(item.render):
        render = item.render
        return dataclasses.replace(item, render=lambda ui, *args, **kwargs: render(LegacyUIContext(ui), *args, **kwargs))
    if {"run", "check"} <= names and callable(item.run):
        run = item.run
        return dataclasses.replace(item, run=lambda context, *args: run(app_of(context).legacy_view, *args))
    return item


def adapt_arguments(function: Any, argnames: tuple[str, ...]) -> Any:
    """``function`` (a hook implementation of an API 1.x extension; pluggy calls it with its
    arguments in ``argnames`` order) called with the 1.x views: ``context`` becomes
    :class:`LegacyContext`, and the tabs, controls and job tasks it registers get them too."""
    def adapted_argument(name: str, value: Any) -> Any:
        if name == "context" and value is not None:
            return app_of(value).legacy_view
        if name == "register" and callable(value):
            return lambda item, *rest, **kwargs: value(_legacy_registered(item), *rest, **kwargs)
        return value

    @functools.wraps(function)
    def with_legacy_arguments(*args: Any, **kwargs: Any) -> Any:
        args = tuple(adapted_argument(name, value) for name, value in zip(argnames, args)) + args[len(argnames):]
        kwargs = {name: adapted_argument(name, value) for name, value in kwargs.items()}
        return function(*args, **kwargs)

    return with_legacy_arguments
