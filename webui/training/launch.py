"""Running the trainer in its own process through ``accelerate launch``, and following it.

The UI never trains in its own process: :class:`TrainingProcess` writes the config, starts
``python -m accelerate.commands.launch ... -m webui.train --config FILE`` (so multi-GPU and
multi-node accelerate configs work unchanged, and ``--mixed_precision`` reaches both accelerate
and the trainer), sends its output to ``train.log`` in the run folder, and reads the trainer's
``progress.jsonl``. Cancel writes the ``STOP`` file: the trainer saves a checkpoint and exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from webui.training.config import TrainConfig, save_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def launch_command(config_file: str | os.PathLike, num_processes: int = 1, mixed_precision: str = "no") -> list[str]:
    """The ``accelerate launch`` command line for one config file.

    Several processes use accelerate's distributed launcher (torchrun): NCCL on GPUs, gloo on
    the CPU (the trainer runs on the CPU when no GPU is visible).
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
               "--num_processes", str(int(num_processes)), "--mixed_precision", mixed_precision,
               "--dynamo_backend", "no"]
    if int(num_processes) > 1:
        command.append("--multi_gpu")
        command += ["--main_process_port", str(_free_port())]
    elif not torch.cuda.is_available():
        command.append("--cpu")
    return command + ["-m", "webui.train", "--config", str(config_file)]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_events(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every event the trainer wrote so far (a half-written last line is ignored)."""
    path = Path(run_dir) / "progress.jsonl"
    events = []
    if not path.is_file():
        return events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def log_tail(run_dir: str | os.PathLike, lines: int = 40) -> str:
    """The last ``lines`` lines of the run's ``train.log`` (empty when there is none)."""
    path = Path(run_dir) / "train.log"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


class TrainingProcess:
    """One training run in a child process (see the module docstring)."""

    def __init__(self, config: TrainConfig, num_processes: int = 1) -> None:
        self.config = config
        self.num_processes = num_processes
        self.run_dir = config.run_path
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None

    def start(self, fresh: bool = False) -> None:
        """Start (or, with ``config.resume``, resume) the run. ``fresh`` clears old progress first."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for old in self.run_dir.glob("checkpoints/*.pt"):
                old.unlink()
        (self.run_dir / "progress.jsonl").unlink(missing_ok=True)
        (self.run_dir / "STOP").unlink(missing_ok=True)
        config_file = save_config(self.config, self.run_dir / "config.json")
        command = launch_command(config_file, self.num_processes, self.config.mixed_precision)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        log = open(self.run_dir / "train.log", "w", encoding="utf-8")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(command, cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.started_at = time.time()

    def cancel(self) -> None:
        """Ask the run to save a checkpoint and stop."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "STOP").write_text("stop requested\n")

    def kill(self) -> None:
        """Stop the run at once, without a checkpoint (prefer :meth:`cancel`)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    @property
    def running(self) -> bool:
        """Whether the child process was started and has not exited yet."""
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The child's exit status (0 done, 3 cancelled, 2 bad config, 1 failure); None while it runs."""
        return None if self.process is None else self.process.poll()

    def events(self) -> list[dict[str, Any]]:
        """The trainer's events so far (:func:`read_events` of the run folder)."""
        return read_events(self.run_dir)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the run's ``train.log``."""
        return log_tail(self.run_dir, lines)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit; its exit status (None if it was never started)."""
        if self.process is None:
            return None
        return self.process.wait(timeout)
