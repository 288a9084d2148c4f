"""The running app's context: what extensions get to work with (through ``webui.api``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.jobs import GenerationRequest, GenerationResult, Job

if TYPE_CHECKING:
    from webui.config import SettingsStore
    from webui.pipelines.manager import PipelineManager
    from webui.pipelines.sources import ModelSource
    from webui.plugins import ExtensionInfo, PluginHost
    from webui.job_store import JobRecorder
    from webui.queue import JobQueue


@dataclass
class EaselContext:
    """Settings, the pipeline manager, folders and the generation entry point of one app."""

    settings: "SettingsStore"
    pipelines: "PipelineManager"
    plugins: "PluginHost"
    models_dir: Path
    outputs_dir: Path
    data_dir: Path
    default_model: str = "tiny"
    max_side: int = 2048
    extension_state: dict[str, Any] = field(default_factory=dict)
    """Per-app state of extensions (API 1.2), one entry per extension under its own name.

    For objects that must outlive one page or session but not the app, e.g. the Train tab's
    running training process, which every browser session (and a reloaded page) must reach.
    Use ``context.extension_state.setdefault("myext", ...)`` rather than module-level
    globals: two apps in one process (tests, several servers) then keep apart. Not saved;
    settings that must survive a restart belong in :meth:`UIContext.remember`.
    """
    queue: "JobQueue | None" = field(default=None, repr=False)
    """The device's job queue (created with the app); use :meth:`submit` / :meth:`generate`."""
    recorder: "JobRecorder | None" = field(default=None, repr=False)
    """Persisted jobs (SQLite under the data folder) of the REST API: see :meth:`job_recorder`."""

    @property
    def lora_dir(self) -> Path:
        """Where LoRA files live and trained LoRAs are written (``<models>/Lora``, A1111 layout)."""
        return self.models_dir / "Lora"

    @property
    def datasets_dir(self) -> Path:
        """The only folder the Train tab takes datasets from (``<data-dir>/datasets``)."""
        return self.data_dir / "datasets"

    @property
    def training_dir(self) -> Path:
        """Run folders of training jobs: checkpoints, logs, progress (``<data-dir>/training``)."""
        return self.data_dir / "training"

    def generate(self, request: GenerationRequest, job: Job | None = None) -> GenerationResult:
        """Run an image job of any task (``request.task``) through the queue and wait for its result.

        Raises what the job raised (:class:`RequestError`, :class:`GenerationError`, ...) or
        :class:`webui.queue.QueueFullError` when the queue is full.
        """
        return self.job_queue().generate(request, job)

    def submit(self, request: GenerationRequest, job: Job | None = None) -> Job:
        """Queue an image job and return its :class:`Job` at once (API 1.3): follow its events,
        ``queue.wait(job)`` for the result, ``queue.cancel(job)`` to cancel or interrupt it."""
        return self.job_queue().submit(request, job)

    def job_queue(self) -> "JobQueue":
        """The device's job queue (made on first use for a context built without one)."""
        if self.queue is None:
            from webui.queue import create_queue

            self.queue = create_queue(self)
        return self.queue

    def job_recorder(self) -> "JobRecorder":
        """The persisted jobs of this app (:mod:`webui.job_store`): records in ``<data_dir>/jobs.sqlite3``,
        re-queued after a restart, webhooks. Made on first use; opens no file until a job is persisted."""
        if self.recorder is None:
            from webui.job_store import JobRecorder

            self.recorder = JobRecorder(self)
        return self.recorder

    def close(self) -> None:
        """Stop the queue (waiting jobs are dropped; persisted ones stay queued for the next start) and
        close the job store. The app takes no more jobs afterwards."""
        if self.queue is not None:
            self.queue.close()
        if self.recorder is not None:
            self.recorder.close()

    def call_hook(self, name: str, **kwargs: Any) -> list[Any]:
        """Call hook ``name`` (see :mod:`webui.hookspecs`) on every enabled extension.

        For extensions that run their own jobs (the Background tab's inpainting) and want the
        per-job hooks (``before_generation``, ``pipeline_call_kwargs``, ``infotext_fields``,
        ``after_generation``, ``out_of_memory``) to apply as in txt2img. Pass the hook's
        arguments by name; returns the implementations' non-None results. An implementation
        that raises is reported and skipped, except :class:`webui.api.ExtensionError`, which
        propagates (a refusal with a message for the user).
        """
        return self.plugins.call(name, **kwargs)

    def extension_infotext_fields(self, request: GenerationRequest, model) -> dict:
        """Every extension's ``infotext_fields`` for this job, merged, keys A1111 cannot read dropped."""
        from webui.generation import extension_infotext_fields

        return extension_infotext_fields(self, request, model)

    def extension_call_kwargs(self, request: GenerationRequest, model) -> dict:
        """Every extension's ``pipeline_call_kwargs`` for this job, merged (later extensions win)."""
        from webui.generation import extension_call_kwargs

        return extension_call_kwargs(self, request, model)

    def out_of_memory_answers(self, request: GenerationRequest, model, error: BaseException) -> tuple[list, bool]:
        """Free the device memory and ask the ``out_of_memory`` hooks: (advice sentences, retry wanted)."""
        from webui.generation import out_of_memory_answers

        return out_of_memory_answers(self, request, model, error)

    def device_in_use(self) -> str | None:
        """Why the queue's device is held outside the queue right now (``device_in_use`` hooks), or None."""
        for reason in self.plugins.call("device_in_use", context=self):
            if reason:
                return str(reason)
        return None

    def list_models(self) -> list["ModelSource"]:
        """Every model a user can pick: built-ins, local files and folders, hub presets."""
        return self.pipelines.list_models()

    def family_of(self, name: str) -> str | None:
        """The family of a listed model (``sd1``, ``sdxl``, ...) or None when it cannot be told yet."""
        from webui.pipelines.loaders import detect_family

        try:
            source = self.pipelines.catalog.resolve(name)
            if source.kind == "hub" and not source.family:
                return None  # would need the network; known after the first load
            return detect_family(source)
        except Exception:  # noqa: BLE001 - unknown or unreadable: the generation reports it properly
            return None

    def model_source(self, name: str) -> "ModelSource | None":
        """The listed source called ``name`` (None for names that are not listed, e.g. hub ids)."""
        return next((source for source in self.list_models() if source.name == name), None)

    def native_size_of(self, name: str) -> int | None:
        """The image side a model was trained at (its own, else its family's), None when unknown."""
        from webui.pipelines.families import FAMILY_NATIVE_SIZES

        source = self.model_source(name)
        if source is not None and source.native_size:
            return source.native_size
        family = self.family_of(name)
        return FAMILY_NATIVE_SIZES.get(family) if family else None

    def extensions(self) -> list["ExtensionInfo"]:
        """What is loaded, disabled or failed, for the Extensions page."""
        return list(self.plugins.extensions.values())
