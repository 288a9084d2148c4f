"""The running app's context: settings, the pipeline manager, the plugin host, folders, the queue.

This is the core's object. Extensions get :attr:`EaselContext.for_extensions`, the narrow
facade of :mod:`webui.extension_context` (API 2.0); API 1.x extensions get its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.jobs import GenerationRequest, GenerationResult, Job

if TYPE_CHECKING:
    from webui.config import SettingsStore
    from webui.extension_context import ExtensionContext, LegacyContext
    from webui.models_store import LocalModel
    from webui.pipelines.downloads import DownloadPolicy, DownloadResult, ProgressCallback
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
    extension_install_allowed: bool = False
    """Whether the Extensions page may run pip for missing requirements (a localhost server, or
    ``--allow-extension-install``); never true for a server reachable from other machines by default."""
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
    download_policy: "DownloadPolicy | None" = field(default=None, repr=False)
    """What :meth:`download_model` may fetch (API 1.4); None: a server on localhost only, safetensors only."""
    _facade: Any = field(default=None, init=False, repr=False, compare=False)
    _legacy: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def for_extensions(self) -> "ExtensionContext":
        """The facade extensions get as ``context`` (API 2.0): :class:`webui.extension_context.ExtensionContext`."""
        if self._facade is None:
            from webui.extension_context import ExtensionContext

            self._facade = ExtensionContext(self)
        return self._facade

    @property
    def legacy_view(self) -> "LegacyContext":
        """The context API 1.x extensions get: the facade plus the internals they used to reach, deprecated."""
        if self._legacy is None:
            from webui.extension_context import LegacyContext

            self._legacy = LegacyContext(self)
        return self._legacy

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

    def wait_for(self, job: Job, timeout: float | None = None) -> GenerationResult:
        """Block until a submitted ``job`` ends; its result, or the error that ended it."""
        return self.job_queue().wait(job, timeout)

    def cancel(self, job: Job) -> str:
        """Cancel a waiting job (``"cancelled"``) or interrupt a running one (``"interrupted"``)."""
        return self.job_queue().cancel(job)

    def setting(self, key: str, default: Any = None) -> Any:
        """The value of setting ``key`` (API 1.4): the saved value, else its default, else ``default``.

        Inside a job this is the job's value (a job retried after running out of memory may run
        under a lower memory profile than the app's setting).
        """
        return self.settings.get(key, default)

    def set_setting(self, key: str, value: Any) -> Any:
        """Validate and save setting ``key`` (API 1.4); returns the stored value, raises ValueError."""
        return self.settings.set(key, value)

    @property
    def device(self) -> Any:
        """The ``torch.device`` the app's jobs run on (API 1.4)."""
        return self.pipelines.device

    def device_lock(self) -> Any:
        """The lock held while something uses the app's device (API 1.4); hold it for your own
        model work outside the job queue (``with context.device_lock(): ...``)."""
        return self.pipelines.device_lock()

    def extension_failures(self) -> list[Any]:
        """Every failing (extension, stage) pair with its count (API 1.4), for the Extensions page."""
        return list(self.plugins.failures)

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

    def call_hook(self, name: str, **kwargs: Any) -> Any:
        """Call hook ``name`` (see :mod:`webui.hookspecs`) on every enabled extension.

        For extensions that run their own jobs (the Background tab's inpainting) and want the
        per-job hooks (``before_generation``, ``pipeline_call_kwargs``, ``infotext_fields``,
        ``after_generation``, ``out_of_memory``) to apply as in txt2img. Pass the hook's
        arguments by name; returns the implementations' non-None results (for a ``firstresult``
        hook such as ``device_in_use``: the first answer, or None). An implementation that
        raises is reported and skipped, except :class:`webui.api.ExtensionError`, which
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
        reason = self.plugins.call("device_in_use", context=self)  # firstresult: the first answer wins
        return str(reason) if reason else None

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

    # -- local models: listing, downloading, exporting (API 1.4; the Models page uses these) --

    @property
    def origins_file(self) -> Path:
        """Where downloaded and exported models' origins are recorded (``<data-dir>/model_origins.json``)."""
        return self.data_dir / "model_origins.json"

    def _origins(self):
        from webui.models_store import OriginRecord

        return OriginRecord(self.origins_file, self.models_dir)

    def local_models(self, compute_hashes: bool = True) -> list["LocalModel"]:
        """Every local checkpoint, LoRA and VAE with size, family, SHA-256 and origin (API 1.4).

        Hashes come from the app's hash cache: a large file is read once per version, so the
        first listing after a new file arrives takes a moment. With ``compute_hashes`` off, only
        hashes already known are given (``""`` for the others) and no weights are read.
        """
        from webui.models_store import list_local_models
        from webui.pipelines.hashing import HashCache

        cache = self.pipelines.hash_cache or HashCache(self.data_dir / "hashes.json")
        return list_local_models(self.models_dir, cache, self._origins(),
                                 allow_pickle=self.pipelines.catalog.allow_pickle, compute_hashes=compute_hashes)

    def download_model(self, source: str, kind: str = "checkpoint", *, filename: str | None = None,
                       sha256: str | None = None, progress: "ProgressCallback | None" = None) -> "DownloadResult":
        """Download a model into the folder of ``kind`` (``checkpoint``, ``lora``, ``vae``). API 1.4.

        ``source`` is an ``https://`` URL (``filename`` optionally names the file) or a hub id
        ``owner/name`` (with ``filename``: that one file; without: the whole diffusers repository
        into ``Stable-diffusion/<name>/``). ``sha256``, when given, must match or the download is
        removed. ``progress`` gets a :class:`webui.pipelines.downloads.DownloadProgress` after
        every chunk. The app's :attr:`download_policy` decides what is allowed; refusals and
        failures raise :class:`webui.pipelines.downloads.DownloadError` with a message for the user.
        """
        from webui.pipelines.downloads import DownloadError, DownloadPolicy, download_hub, download_url
        from webui.pipelines.sources import HUB_ID_PATTERN

        policy = self.download_policy or DownloadPolicy(allow_pickle=self.pipelines.catalog.allow_pickle)
        source = (source or "").strip()
        filename = (filename or "").strip() or None
        sha256 = (sha256 or "").strip() or None
        if "://" in source:
            return download_url(source, kind, self.models_dir, policy=policy, filename=filename,
                                expected_sha256=sha256, progress=progress, origins=self._origins())
        if HUB_ID_PATTERN.match(source):
            return download_hub(source, kind, self.models_dir, policy=policy, filename=filename,
                                expected_sha256=sha256, progress=progress, origins=self._origins())
        raise DownloadError(f"{source!r} is neither an https:// URL nor a hub id (owner/name)")

    def export_model(self, name: str, output_name: str = "", half: bool = False) -> Path:
        """Export the listed diffusers-folder model ``name`` as one original-layout ``.safetensors``
        checkpoint ``Stable-diffusion/<output_name>.safetensors`` (default: the model's name), the
        file AUTOMATIC1111, Forge and ComfyUI load; its configs go beside it (``<name>.config/``) so
        Easel loads it offline too. ``half`` stores fp16 weights. API 1.4. Raises
        :class:`webui.errors.EaselError` for a model that is not a local folder or an existing file."""
        import torch

        from webui.errors import EaselError
        from webui.models_store import Origin, now
        from webui.pipelines.downloads import safe_filename
        from webui.pipelines.export import export_diffusers_folder

        source = self.model_source(name)
        if source is None or source.kind != "folder":
            raise EaselError(f"{name!r} is not a local diffusers folder; only those are exported to one file")
        stem = (output_name or "").strip().removesuffix(".safetensors") or Path(source.name).name
        target = self.models_dir / "Stable-diffusion" / f"{safe_filename(stem)}.safetensors"
        if target.exists():
            raise EaselError(f"{target.name} already exists in Stable-diffusion/; pick another name")
        try:
            export_diffusers_folder(source.location, target, dtype=torch.float16 if half else None,
                                    metadata={"easel_exported_from": source.name})
        except (ValueError, NotImplementedError) as exc:
            raise EaselError(f"Cannot export {name}: {exc}") from exc
        self._origins().set(target, Origin(source="export", location=source.name, downloaded_at=now()))
        return target
