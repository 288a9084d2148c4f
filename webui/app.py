"""Assembling one Easel app from its options: folders, settings, extensions, manager, UI."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from webui.config import Setting, SettingsStore
from webui.context import EaselContext
from webui.pipelines.hashing import HashCache
from webui.pipelines.manager import LoadedModel, PipelineManager, resolve_device
from webui.pipelines.sources import ModelCatalog
from webui.plugins import PluginHost
from webui.queue import DEFAULT_LIMIT, create_queue
from webui.queue import LIMIT_SETTING as QUEUE_LIMIT_SETTING

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class AppOptions:
    """Everything that shapes an app instance (the command-line flags map onto this)."""

    models_dir: Path = REPO_ROOT / "models"
    outputs_dir: Path = REPO_ROOT / "outputs"
    data_dir: Path = REPO_ROOT / "data"
    extensions_dir: Path = REPO_ROOT / "extensions"
    extra_extension_dirs: list[Path] = field(default_factory=list)
    device: str = "auto"
    precision: str = "auto"
    model: str | None = None
    max_side: int = 2048
    max_loaded: int = 2
    allow_pickle: bool = False
    # who may download models from the Models page (see webui.pipelines.downloads.DownloadPolicy)
    listening: bool = False  # served beyond this machine (--listen or --share)
    login_required: bool = False  # a login protects the UI (--auth)
    allow_downloads: bool = False  # download while listening without a login (--allow-downloads)
    allow_lan_downloads: bool = False  # URLs on private/loopback addresses and plain http (--allow-lan-downloads)
    allow_extension_install: bool = False
    """Offer "Install requirements" on the Extensions page (the server sets it when bound to localhost)."""
    entry_points: bool = True
    disabled_extensions: set[str] = field(default_factory=set)
    extra_plugins: dict[str, object] = field(default_factory=dict)  # name -> already imported extension
    setting_overrides: dict[str, object] = field(default_factory=dict)  # flags like --medvram, not saved
    backend: str = "local"
    """Where jobs run (:mod:`webui.backends`): ``local`` (this process) or ``ray`` (Ray Serve workers)."""
    ray_address: str = "local"  # --ray-address: local (start a private cluster), auto, or HOST:PORT
    workers: int = 1  # --workers: Ray Serve replicas (one per GPU)
    backend_options: dict[str, object] = field(default_factory=dict)
    """More options of the backend (e.g. ``replica_cpus`` for CPU replicas; see RayServeBackend)."""


def download_policy(options: AppOptions):
    """The model-download rules of an app (:class:`webui.pipelines.downloads.DownloadPolicy`)."""
    from webui.pipelines.downloads import DownloadPolicy

    return DownloadPolicy(listening=options.listening, authenticated=options.login_required,
                          allow_without_auth=options.allow_downloads,
                          allow_private_addresses=options.allow_lan_downloads, allow_http=options.allow_lan_downloads,
                          allow_pickle=options.allow_pickle)


def backend_of(context: EaselContext, options: AppOptions):
    """The backend the options ask for; the default (``local``) never imports ``ray``."""
    from webui.backends import create_backend

    if options.backend == "local":
        return create_backend(context)
    return create_backend(context, options.backend, app_options=options, address=options.ray_address,
                          workers=options.workers, **options.backend_options)


def create_context(options: AppOptions) -> EaselContext:
    """Load extensions and settings and build the pipeline manager (no model is loaded)."""
    for folder in (options.outputs_dir, options.data_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    settings = SettingsStore(Path(options.data_dir) / "config.json")
    disabled = set(options.disabled_extensions) | set(settings.get("disabled_extensions", []) or [])
    plugins = PluginHost(disabled=disabled)
    plugins.load_all(options.extensions_dir, options.extra_extension_dirs, entry_points=options.entry_points)
    for name, plugin in options.extra_plugins.items():
        plugins.register_object(name, plugin)

    def register_setting(setting: Setting) -> None:
        if not isinstance(setting, Setting):
            raise TypeError(f"register_settings expects webui.api.Setting, got {type(setting).__name__}")
        settings.register(setting)

    register_setting(Setting(key=QUEUE_LIMIT_SETTING, label="Jobs that may wait in the queue", default=DEFAULT_LIMIT,
                             kind="int", minimum=1, maximum=10_000, section="Queue",
                             help="One more job than this is refused with a message; nothing accepted is lost"))
    plugins.call("register_settings", register=register_setting)
    for key, value in options.setting_overrides.items():
        settings.override(key, value)

    context_holder: list[EaselContext] = []

    def configure(model: LoadedModel) -> None:
        plugins.call("configure_pipeline", model=model, context=context_holder[0])

    catalog = ModelCatalog(Path(options.models_dir), allow_pickle=options.allow_pickle)
    manager = PipelineManager(
        catalog,
        device=resolve_device(options.device),
        precision=options.precision,
        max_loaded=options.max_loaded,
        hash_cache=HashCache(Path(options.data_dir) / "hashes.json"),
        configure=configure,
    )
    context = EaselContext(
        settings=settings,
        pipelines=manager,
        plugins=plugins,
        models_dir=Path(options.models_dir),
        outputs_dir=Path(options.outputs_dir),
        data_dir=Path(options.data_dir),
        default_model=options.model or catalog.default_name(),
        max_side=options.max_side,
        download_policy=download_policy(options),
        extension_install_allowed=options.allow_extension_install,
    )
    context.queue = create_queue(context, backend=backend_of(context, options))
    context_holder.append(context)
    plugins.call("app_started", context=context)
    try:  # REST jobs that were queued or running when the last process stopped
        context.job_recorder().recover()
    except Exception:  # noqa: BLE001 - an unreadable job store must not keep the app from starting
        log.exception("Could not queue again the jobs of %s", context.job_recorder().path)
    return context


def create_blocks(context: EaselContext):
    """The Gradio Blocks UI for a context."""
    from webui.ui.shell import build_blocks

    return build_blocks(context)
