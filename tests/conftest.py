"""Shared fixtures: offline environment, app contexts on temporary folders, a live server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# The fixtures extension authors get (webui.testing, loaded as a plugin by pytest.ini) are the
# ones Easel's own tests use.
from webui.testing import free_port, make_options, start_server  # noqa: E402,F401 - tests import them from here


@pytest.fixture
def make_context(tmp_path):
    """Factory: ``make_context(**AppOptions overrides)`` -> EaselContext."""
    from webui.app import create_context

    def factory(**overrides):
        return create_context(make_options(tmp_path, **overrides))

    return factory


@pytest.fixture
def context(make_context):
    return make_context()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """A real Easel server on a free localhost port, shared by the server and browser tests."""
    import urllib.request

    context, blocks, url = start_server(make_options(tmp_path_factory.mktemp("server")))

    with urllib.request.urlopen(url, timeout=30) as response:
        first_status = response.status
    try:
        yield {"url": url, "context": context, "blocks": blocks, "first_status": first_status,
               "loaded_at_start": context.pipelines.loaded_names()}
    finally:
        blocks.close()


@pytest.fixture
def train_hold(tmp_path, monkeypatch):
    """The trainer's hold file (``EASEL_TRAIN_HOLD_FILE``, see webui/training/trainer.py), in ``tmp_path``.

    Write a step number to it before a run starts and the run waits after that step until the
    file is deleted or the run is cancelled; trainer processes started during the test see it.
    The file is deleted when the test ends, so a held run always finishes.
    """
    from webui.training.trainer import HOLD_FILE_ENV

    path = tmp_path / "train-hold"
    monkeypatch.setenv(HOLD_FILE_ENV, str(path))
    yield path
    path.unlink(missing_ok=True)  # a test that failed early must not leave a trainer waiting forever


#: ``python -m tools.gpu_check`` names a JSON-lines file here; tests append the figures they measure.
FIGURES_ENV = "EASEL_TEST_FIGURES"


@pytest.fixture
def record_figures(request):
    """``record_figures(name, **figures)``: keep what a test measured (memory, seconds, PSNR, ...).

    Each call appends ``{"test": node id, "name": name, **figures}`` as one JSON line to the file
    named by ``EASEL_TEST_FIGURES`` (``tools.gpu_check`` sets it and writes the figures into
    docs/benchmarks.md); the figures also go into the test report's ``user_properties``.
    """
    import json

    def record(name: str, **figures) -> None:
        request.node.user_properties.append((name, figures))
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"test": request.node.nodeid, "name": name, **figures}) + "\n")

    return record
