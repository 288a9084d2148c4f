"""Serving the app: options from the command line, the Gradio server, login, safety defaults."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from webui.app import AppOptions, create_blocks, create_context

log = logging.getLogger("easel")


def options_from_args(args: Any) -> AppOptions:
    """Map the command-line flags of launch.py onto :class:`AppOptions`."""
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
        allow_extension_install=bool(getattr(args, "allow_extension_install", False))
        or not (args.listen or args.share),
        disabled_extensions=set(args.disable_extension),
        setting_overrides=memory_overrides(args),
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


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:password`` (several separated by commas) for Gradio's login page."""
    if not value:
        return None
    pairs = []
    for item in value.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth expects USER:PASSWORD")
        pairs.append((user, password))
    return pairs


def launch_blocks(blocks, context, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
                  auth=None, block: bool = True):
    """Queue and launch; only the outputs folder is served besides Gradio's own cache."""
    blocks.queue(default_concurrency_limit=4)
    return blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        allowed_paths=[str(context.outputs_dir)],
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        footer_links=["api", "settings"],
    )


def serve_app(args: Any) -> None:
    """Build and serve the app described by launch.py's flags (blocks until stopped)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    context = create_context(options_from_args(args))
    for failure in context.plugins.failures:
        log.warning("Extension %s failed (%s): %s", failure.extension, failure.stage, failure.message)
    auth = parse_auth(args.auth)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    if (args.listen or args.share) and not auth:
        log.warning("Serving beyond this machine without --auth: anyone who can reach it can use it")
    blocks = create_blocks(context)
    log.info("Easel on http://%s:%d (models load on first use)", "127.0.0.1" if not args.listen else host, args.port)
    launch_blocks(blocks, context, host=host, port=args.port, share=args.share, auth=auth, block=True)
