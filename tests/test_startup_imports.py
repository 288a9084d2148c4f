"""Start-up: the UI is built (every built-in extension loaded, every tab rendered) without importing
diffusers, transformers, peft or scipy; they load with the first model or the first mask tool.
Importing them took more than half of the time to the first HTTP 200 (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("diffusers", "transformers", "peft", "scipy", "accelerate", "compel")

BUILD_THE_APP = f"""
import json, sys, tempfile
from pathlib import Path
from webui.app import AppOptions, create_blocks, create_context
base = Path(tempfile.mkdtemp())
context = create_context(AppOptions(data_dir=base / "data", outputs_dir=base / "outputs", entry_points=False))
blocks = create_blocks(context)
tabs = [tab["props"].get("label") for tab in blocks.config["components"] if tab["type"] == "tabitem"]
failed = [info.name for info in context.extensions() if info.status != "loaded"]
print(json.dumps({{"heavy": [name for name in {HEAVY!r} if name in sys.modules], "tabs": tabs, "failed": failed}}))
"""


def test_building_the_ui_imports_no_model_libraries(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([sys.executable, "-c", BUILD_THE_APP], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == []
    assert {"txt2img", "Background", "Train", "PNG Info", "Extensions", "Settings"} <= set(report["tabs"]), report
    assert report["heavy"] == [], report["heavy"]
