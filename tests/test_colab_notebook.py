"""The Colab notebook: valid, one cell, and every command and launch.py flag it runs exists.

The cell is executed here with its form fields filled in and ``subprocess.run`` recorded
instead of run; the launch command it would run is then parsed by launch.py's own parser.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "Easel_Colab.ipynb"


def code_cell() -> str:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert len(cells) == 1, "one cell installs and launches"
    return "".join(cells[0]["source"])


def run_cell(tmp_path: Path, monkeypatch, **fields: str) -> list[list[str]]:
    """Run the cell with ``fields`` set, Easel "cloned" into ``tmp_path``; returns the commands it ran."""
    source = code_cell().replace('"/content/easel"', repr(str(tmp_path / "easel")))
    for name, value in fields.items():
        before = source
        source = source.replace(f'{name} = ""', f"{name} = {value!r}", 1)
        assert source != before, f"no form field {name}"
    (tmp_path / "easel").mkdir()
    (tmp_path / "easel" / "launch.py").write_text("")
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, check=False: commands.append(list(command)))
    monkeypatch.chdir(tmp_path)
    exec(compile(source, str(NOTEBOOK), "exec"), {"__name__": "__main__"})
    return commands


@pytest.mark.parametrize("fields", [
    {},
    {"HUB_MODEL": "stabilityai/stable-diffusion-xl-base-1.0", "LOGIN": "me:secret"},
    {"CHECKPOINT_URL": "https://example.org/files/model.safetensors?download=true", "LOGIN": "me:secret"},
])
def test_cell_runs_launch_with_flags_that_exist(tmp_path, monkeypatch, fields):
    sys.path.insert(0, str(ROOT))
    import launch

    commands = run_cell(tmp_path, monkeypatch, **fields)
    launch_command = commands[-1]
    assert launch_command[:2] == [sys.executable, "launch.py"]
    args, extra = launch.parse_args(launch_command[2:])
    assert extra == [] and args.share and args.api
    if "LOGIN" in fields:
        assert args.gradio_auth == fields["LOGIN"] and args.api_auth == fields["LOGIN"]
    if "HUB_MODEL" in fields:
        assert args.model == fields["HUB_MODEL"]
    for command in commands[:-1]:
        assert command[0] in ("git", "wget"), command  # what a Colab machine has
    if "CHECKPOINT_URL" in fields:
        assert args.model == "model.safetensors"
        download = commands[0]
        assert download[0] == "wget" and "--continue" in download
        assert download[download.index("-O") + 1].endswith("models/Stable-diffusion/model.safetensors")


def test_cell_refuses_pickle_checkpoints(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="safetensors"):
        run_cell(tmp_path, monkeypatch, CHECKPOINT_URL="https://example.org/model.ckpt")
