"""Serving the app: options from the command line, the Gradio server, login, safety defaults."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.app import AppOptions, create_blocks, create_context

if TYPE_CHECKING:
    from webui.rest import ApiOptions

log = logging.getLogger("easel")


def options_from_args(args: Any) -> AppOptions:
    """Map the command-line flags of launch.py onto :class:`AppOptions`."""
    listening = bool(getattr(args, "listen", False) or getattr(args, "share", False))
    return AppOptions(
        models_dir=Path(args.models_dir),
        outputs_dir=Path(args.outputs_dir),
        data_dir=Path(args.data_dir),
        extra_extension_dirs=[Path(p) for p in args.extensions_dir],
        device=args.device,
        precision=args.precision,
        model=args.model,
        max_side=args.max_size,
        allow_pickle=args.allow_pickle,
        listening=listening,
        login_required=bool(getattr(args, "gradio_auth", None) or getattr(args, "gradio_auth_path", None)),
        allow_downloads=bool(getattr(args, "allow_downloads", False)),
        allow_lan_downloads=bool(getattr(args, "allow_lan_downloads", False)),
        allow_extension_install=bool(getattr(args, "allow_extension_install", False)) or not listening,
        disabled_extensions=set(args.disable_extension),
        setting_overrides=memory_overrides(args),
        backend=getattr(args, "backend", "local"),
        ray_address=getattr(args, "ray_address", "local"),
        workers=int(getattr(args, "workers", 1)),
    )


def memory_overrides(args: Any) -> dict[str, Any]:
    """``--medvram`` / ``--lowvram`` / ``--vram-budget`` as setting overrides for this run."""
    overrides: dict[str, Any] = {}
    if getattr(args, "lowvram", False):
        overrides["presets.profile"] = "lowvram"
    elif getattr(args, "medvram", False):
        overrides["presets.profile"] = "medvram"
    if getattr(args, "vram_budget", None):
        overrides["offload.vram_budget"] = args.vram_budget
    return overrides


def parse_auth(value: str | None, path: str | None = None, flag: str = "gradio-auth") -> list[tuple[str, str]] | None:
    """``user:password`` pairs (commas between them) of ``--<flag>`` and ``--<flag>-path``; None when unset."""
    from webui.rest.auth import CredentialsError, read_credentials

    try:
        pairs = read_credentials(value, path, flag)
    except CredentialsError as exc:
        raise SystemExit(str(exc)) from None
    return pairs or None


def hidden_flags(args: Any) -> dict[str, Any]:
    """The flags as ``GET /sdapi/v1/cmd-flags`` reports them: JSON values, credentials hidden."""
    flags: dict[str, Any] = {}
    for key, value in sorted(vars(args).items()):
        if "auth" in key and value:
            value = "(set)"
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple, set)):
            value = [str(item) for item in value]
        flags[key] = value
    return flags


def api_options(args: Any) -> "ApiOptions":
    """The REST API's options from launch.py's flags."""
    from webui.rest import ApiOptions

    return ApiOptions(credentials=parse_auth(args.api_auth, args.api_auth_path, "api-auth") or [],
                      max_body_bytes=int(args.api_max_body_mb) * 1024 * 1024, cmd_flags=hidden_flags(args))


def launch_blocks(blocks, context, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
                  auth=None, block: bool = True, api: "ApiOptions | None" = None):
    """Queue and launch; only the outputs folder is served besides Gradio's own cache.

    With ``api``, the REST API (``/sdapi/v1``, ``/easel/v1``) is served by the same server,
    its OpenAPI document at ``/openapi.json`` and ``/docs``.
    """
    from webui.rest import api_middleware, install_api

    blocks.queue(default_concurrency_limit=4)
    app_kwargs = {"middleware": api_middleware(api), "docs_url": "/docs"} if api is not None else None
    result = blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        allowed_paths=[str(context.outputs_dir)],
        prevent_thread_lock=True,
        show_error=True,
        quiet=not block,
        footer_links=["api", "settings"],
        app_kwargs=app_kwargs,
    )
    if api is not None:
        install_api(blocks.server_app, context, api)
    if block:
        blocks.block_thread()
    return result


def serve_api_only(context, api: "ApiOptions", host: str, port: int) -> None:
    """``--nowebui``: the REST API alone on ``host:port`` (blocks until stopped)."""
    import uvicorn

    from webui.rest import create_api_app

    uvicorn.run(create_api_app(context, api), host=host, port=port, log_level="info")


def serve_app(args: Any) -> None:
    """Build and serve the app described by launch.py's flags (blocks until stopped)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    context = create_context(options_from_args(args))
    stop_on_sigterm()  # after create_context: the Ray backend's ray.init installs a handler that aborts
    for failure in context.plugins.failures:
        log.warning("Extension %s failed (%s): %s", failure.extension, failure.stage, failure.message)
    gradio_auth = parse_auth(args.gradio_auth, args.gradio_auth_path, "gradio-auth")
    api = api_options(args) if (args.api or args.nowebui) else None
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    for warning in exposure_warnings(args, gradio_auth, api):
        log.warning(warning)
    shown = "127.0.0.1" if not args.listen else host
    try:
        if args.nowebui:
            log.info("Easel API on http://%s:%d/sdapi/v1 and /easel/v1 (docs: /docs)", shown, args.port)
            serve_api_only(context, api, host, args.port)
            return
        blocks = create_blocks(context)
        log.info("Easel on http://%s:%d (models load on first use)%s", shown, args.port,
                 "; API at /sdapi/v1 and /easel/v1, docs at /docs" if api else "")
        launch_blocks(blocks, context, host=host, port=args.port, share=args.share, auth=gradio_auth, block=True,
                      api=api)
    except KeyboardInterrupt:
        log.info("Stopping (Ctrl+C or SIGTERM)")
    finally:
        context.close()  # persisted jobs still waiting stay queued for the next start; Ray workers are released
        log.info("Easel stopped")


def stop_on_sigterm() -> None:
    """SIGTERM (``kill``, ``systemctl stop``, ``docker stop``) stops the app as Ctrl+C does, through
    :meth:`EaselContext.close`: waiting jobs stay queued for the next start and the Ray workers
    (``--backend ray``) are released. Without this the process dies at once (Python's default)
    or aborts (Ray's handler)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def exposure_warnings(args: Any, gradio_auth, api: "ApiOptions | None") -> list[str]:
    """What is reachable beyond this machine without credentials, said loudly."""
    warnings = []
    beyond = "on every network interface" if args.listen else "through a public share link" if args.share else ""
    if not beyond:
        return warnings
    if not gradio_auth and not args.nowebui:
        warnings.append(f"!!! The UI is served {beyond} WITHOUT A LOGIN: anyone who reaches it can use it. "
                        "Set --gradio-auth USER:PASSWORD.")
    if api is not None and not api.credentials:
        warnings.append(f"!!! The REST API is served {beyond} WITHOUT AUTHENTICATION: anyone who reaches it can "
                        "run jobs and change options. Set --api-auth USER:PASSWORD.")
    return warnings
