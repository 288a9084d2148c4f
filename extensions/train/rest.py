"""Training as REST routes (``/easel/v1/training/...``): start, status with the loss history, cancel,
resume, list runs — the Train tab's actions for programs.

The run is the app's one training run, the same one the Train tab shows
(``context.extension_state["train"]``): a run started here is followed and can be cancelled from
the tab, and the other way round. A run's state is read from its folder under
``context.training_dir`` (the trainer's ``progress.jsonl``), so finished runs are listed after a
restart too. Written only against :mod:`webui.api`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from webui.api import TrainConfig, TrainingConfigError, TrainingProcess, read_training_events, training_log_tail

SERVER_CHOSEN = ("models_dir", "dataset_dir", "run_dir", "resume", "output_name")
"""TrainConfig fields the server decides (folders, resuming) or takes from elsewhere in the request."""


class TrainingStart(BaseModel):
    """A training run to start: a dataset folder, a name, and the trainer's options."""

    dataset: str = Field(description="the name of a folder inside the datasets folder (<data-dir>/datasets)")
    name: str = Field(description="the run's (and the LoRA's) name: a plain file name")
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "TrainConfig options (model, mode, resolution, rank, alpha, learning_rate, max_steps, epochs, batch_size, "
        "checkpoint_every, validation_prompts, ...; see webui/training/config.py); unknown names are refused"))


class TrainingResume(BaseModel):
    """Options to change when resuming (e.g. more ``max_steps``); empty = as the run was started."""

    config: dict[str, Any] = Field(default_factory=dict)


class TrainingRun(BaseModel):
    """One run's state, read from the trainer's progress file."""

    name: str
    status: str = Field(description="starting, running, done, cancelled, failed or interrupted")
    running: bool
    step: int
    total: int | None = None
    epoch: float = 0.0
    losses: list[list[float]] = Field(default_factory=list, description="[step, loss] of every step so far")
    eval_losses: list[list[float]] = Field(default_factory=list, description="[step, loss] of the evaluation set")
    checkpoint: str = ""
    message: str = ""
    log_tail: str = Field("", description="the end of the trainer's log when the run failed")


class TrainingRuns(BaseModel):
    runs: list[TrainingRun]


def _config(values: dict[str, Any]) -> dict[str, Any]:
    """The trainer options of a request: unknown names and server-chosen ones refused."""
    known = {item.name for item in dataclasses.fields(TrainConfig)} - set(SERVER_CHOSEN)
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingConfigError(f"unknown or server-chosen training option(s): {', '.join(unknown)}")
    return dict(values)


def register_routes(router: APIRouter, context: Any) -> None:
    """The training routes on ``router`` (the app's ``/easel/v1`` router)."""
    from . import dataset_path, settle, summarize, train_state

    state = train_state(context)

    def run_dir(name: str) -> Path:
        """The folder of an existing run (its name must be a plain folder name under the training folder)."""
        folder = Path(context.training_dir) / name
        if not name or name.startswith(".") or any(mark in name for mark in "/\\:") or not folder.is_dir():
            raise HTTPException(status_code=404, detail=f"no training run named {name!r}")
        return folder

    def describe(folder: Path) -> TrainingRun:
        current = state.current
        mine = current is not None and Path(current.run_dir).resolve() == folder.resolve()
        running = bool(mine and current.running)
        summary = summarize(read_training_events(folder))
        if not running:
            settle(summary, current.returncode if mine else None)
        failed = summary["status"] in ("failed", "interrupted")
        return TrainingRun(name=folder.name, status=summary["status"], running=running, step=summary["step"] or 0,
                           total=summary["total"], epoch=summary["epoch"] or 0.0,
                           losses=[[step, loss] for step, loss in summary["losses"]],
                           eval_losses=[[step, loss] for step, loss in summary["eval"]],
                           checkpoint=summary["checkpoint"] or "", message=str(summary["message"] or ""),
                           log_tail=training_log_tail(folder, 60) if failed else "")

    def launch(config: TrainConfig, fresh: bool) -> TrainingRun:
        try:
            config.validate()
        except (TrainingConfigError, ValueError, TypeError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        with state.lock:
            current = state.current
            if current is not None and current.running:
                raise HTTPException(status_code=409, detail=f"the run {current.config.output_name!r} is still "
                                                            "training; cancel it first")
            process = TrainingProcess(config, num_processes=int(context.setting("train.num_processes", 1)))
            process.start(fresh=fresh)
            state.current = process
        return describe(Path(process.run_dir))

    @router.get("/training/runs", response_model=TrainingRuns, tags=["training"], summary="List training runs")
    def list_runs() -> TrainingRuns:
        """Every run folder with a progress file, the most recently active first."""
        folders = [path.parent for path in Path(context.training_dir).glob("*/progress.jsonl")]
        folders.sort(key=lambda folder: (folder / "progress.jsonl").stat().st_mtime, reverse=True)
        return TrainingRuns(runs=[describe(folder) for folder in folders])

    @router.post("/training/runs", status_code=202, response_model=TrainingRun, tags=["training"],
                 summary="Start a training run", responses={409: {"description": "a run is still training"}})
    def start_run(request: TrainingStart) -> TrainingRun:
        """Start a fresh run on a dataset folder (one run at a time per app); follow it with GET."""
        try:
            values = _config(request.config)
            config = TrainConfig(**{"model": context.default_model, **values,
                                    "models_dir": str(context.models_dir),
                                    "dataset_dir": str(dataset_path(context.datasets_dir, request.dataset)),
                                    "output_name": request.name, "resume": False})
        except (TrainingConfigError, TypeError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        if not request.name or any(mark in request.name for mark in "/\\:") or request.name.startswith("."):
            raise HTTPException(status_code=422, detail=f"name {request.name!r} must be a plain file name")
        config.run_dir = str(Path(context.training_dir) / request.name)
        return launch(config, fresh=True)

    @router.get("/training/runs/{name}", response_model=TrainingRun, tags=["training"],
                summary="A run's status and loss history")
    def get_run(name: str) -> TrainingRun:
        return describe(run_dir(name))

    @router.post("/training/runs/{name}/cancel", status_code=202, response_model=TrainingRun, tags=["training"],
                 summary="Ask a run to save a checkpoint and stop",
                 responses={409: {"description": "the run is not training"}})
    def cancel_run(name: str) -> TrainingRun:
        folder = run_dir(name)
        current = state.current
        if current is None or not current.running or Path(current.run_dir).resolve() != folder.resolve():
            raise HTTPException(status_code=409, detail=f"the run {name!r} is not training")
        current.cancel()
        return describe(folder)

    @router.post("/training/runs/{name}/resume", status_code=202, response_model=TrainingRun, tags=["training"],
                 summary="Continue a run from its latest checkpoint",
                 responses={409: {"description": "a run is still training"}})
    def resume_run(name: str, request: TrainingResume | None = None) -> TrainingRun:
        """Continue the run with the options it was started with (``config`` changes some, e.g. ``max_steps``)."""
        folder = run_dir(name)
        try:
            saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            changes = _config(request.config if request is not None else {})
            config = TrainConfig(**{**saved, **changes, "resume": True, "run_dir": str(folder)})
        except (OSError, ValueError) as exc:
            raise HTTPException(status_code=422, detail=f"the run's config cannot be read: {exc}") from None
        except (TrainingConfigError, TypeError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return launch(config, fresh=False)
