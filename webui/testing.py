"""Pytest fixtures for extension authors (and Easel's own tests): a tiny pipeline, an app
context on temporary folders, a running server with a ``gradio_client``, a job runner.

Use them from an extension's test suite with one line in its ``conftest.py``::

    pytest_plugins = ["webui.testing"]

and then, e.g.::

    def test_my_field_reaches_the_infotext(easel_app, easel_run_job):
        context = easel_app(extra_plugins={"mine": my_extension})
        result = easel_run_job(context, prompt="a red circle", extras={"mine.strength": 0.5})
        assert "Mine: 0.5" in result.images[0].infotext

Everything runs offline on the CPU: the models are Easel's built-in tiny pipelines (random
weights, real architectures, the real VAE factor of 8) or the offline demo model
``easel-shapes``. ``HF_HUB_OFFLINE=1`` is set when this plugin loads.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The size and steps that keep a test job fast on a CPU.
FAST_JOB = {"width": 64, "height": 64, "steps": 2, "seed": 1}


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_options(base: Path, **overrides: Any):
    """:class:`webui.app.AppOptions` on throwaway folders under ``base``: CPU, no third-party entry points.

    Any ``AppOptions`` field can be overridden, e.g. ``extra_plugins={"name": module_or_object}``
    to load an extension under test, ``extra_extension_dirs=[folder]`` for a drop-in folder,
    ``model="tiny-sdxl"``.
    """
    from webui.app import AppOptions

    options = AppOptions(models_dir=base / "models", outputs_dir=base / "outputs", data_dir=base / "data",
                         device="cpu", entry_points=False)
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"AppOptions has no field {key!r}")
        setattr(options, key, value)
    (options.models_dir / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    return options


def start_server(options, api=None):
    """A fresh app (context + blocks) on ``options``, served on a free port: ``(context, blocks, url)``.

    ``api``: a :class:`webui.rest.ApiOptions` to serve the REST API too (``--api``). Close
    it with ``blocks.close()``.
    """
    from webui.app import create_blocks, create_context
    from webui.server import launch_blocks

    context = create_context(options)
    blocks = create_blocks(context)
    port = free_port()
    launch_blocks(blocks, context, host="127.0.0.1", port=port, block=False, api=api)
    return context, blocks, f"http://127.0.0.1:{port}/"


def tiny_pipeline(name: str = "tiny"):
    """A built-in tiny diffusers pipeline (``tiny``, ``tiny-sd2``, ``tiny-sdxl``, ``tiny-sd3``, ...), built offline."""
    from webui.pipelines.tiny import build_tiny_pipeline

    return build_tiny_pipeline(name)


@pytest.fixture
def easel_tiny_pipeline() -> Callable[..., Any]:
    """``easel_tiny_pipeline(name="tiny")`` -> a tiny diffusers pipeline of that family, on the CPU."""
    return tiny_pipeline


@pytest.fixture
def easel_app(tmp_path) -> Callable[..., Any]:
    """``easel_app(**AppOptions overrides)`` -> the :class:`webui.api.ExtensionContext` of an app on
    temporary folders (what your hooks get as ``context``)."""
    from webui.app import create_context

    def factory(**overrides: Any):
        overrides.setdefault("model", "tiny")
        return create_context(make_options(tmp_path, **overrides)).for_extensions

    return factory


@pytest.fixture
def easel_run_job() -> Callable[..., Any]:
    """``easel_run_job(context, **GenerationRequest fields)`` -> the job's :class:`webui.api.GenerationResult`.

    The request goes through the app's queue and the one generation path, with every
    extension's hooks, as a UI or API job does; unset fields default to a fast 64 px,
    2-step job on the context's default model, not saved.
    """
    from webui.jobs import GenerationRequest

    def run(context, **fields: Any):
        values = {**FAST_JOB, "model": context.default_model, "save": False, **fields}
        return context.generate(GenerationRequest(**values))

    return run


@pytest.fixture
def easel_server(tmp_path) -> Iterator[Callable[..., dict[str, Any]]]:
    """``easel_server(**AppOptions overrides)`` -> ``{"url", "context", "client"}``: a running server, its
    :class:`webui.api.ExtensionContext` and a connected ``gradio_client.Client``; every server is closed
    when the test ends."""
    started = []

    def start(**overrides: Any) -> dict[str, Any]:
        from gradio_client import Client

        overrides.setdefault("model", "tiny")
        context, blocks, url = start_server(make_options(tmp_path / f"server{len(started)}", **overrides))
        started.append(blocks)
        return {"url": url, "context": context.for_extensions, "blocks": blocks, "client": Client(url, verbose=False)}

    yield start
    for blocks in started:
        blocks.close()
