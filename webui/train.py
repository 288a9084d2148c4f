"""Command line of the LoRA trainer: ``python -m webui.train --config FILE``.

The config file is the JSON the Train tab writes (:mod:`webui.training.config`). Under
``accelerate launch -m webui.train --config FILE`` the same code runs in several processes.
The main process shows a tqdm bar on stderr (step, loss, s/step, time left; evaluation losses
as lines above it) and prints one JSON summary on stdout at the end.
Exit status: 0 done, 3 cancelled (a checkpoint was kept), 2 bad config, 1 failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import deque
from typing import Any, TextIO

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


class TerminalProgress:
    """Turns the trainer's events into a tqdm bar: ``step n/N``, the step's loss and s/step.

    The loss is the value the trainer already computed for ``progress.jsonl`` (no extra device
    sync); s/step is the mean over the last ``window`` steps. On a terminal the bar redraws at
    most ten times a second; into a file (the Train tab's ``train.log``) every ``file_interval``
    seconds, so the log's tail is not all progress bar.
    """

    def __init__(self, stream: TextIO | None = None, window: int = 10, file_interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.window = window
        self.file_interval = file_interval
        self.bar = None
        self.times: deque[tuple[int, float]] = deque(maxlen=window + 1)

    def __call__(self, record: dict[str, Any]) -> None:
        event = record["event"]
        if event == "start":
            self._open(record)
        elif event == "step" and self.bar is not None:
            step = int(record["step"])
            self.times.append((step, float(record["seconds"])))
            postfix = f"loss={record['loss']:.4f}"
            if len(self.times) > 1:
                (first_step, first_time), (last_step, last_time) = self.times[0], self.times[-1]
                postfix += f", {(last_time - first_time) / max(1, last_step - first_step):.3g} s/step"
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
        elif event == "eval":
            self._write(f"eval loss at step {record['step']}: {record['loss']:.4f}")
        elif event == "checkpoint":
            self._write(f"checkpoint at step {record['step']}: {record['path']}")
        elif event in ("done", "cancelled", "error"):
            self.close()

    def _open(self, record: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.close()
        interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=int(record["total_steps"]), initial=int(record["step"]), unit="step", desc="training",
                        file=self.stream, dynamic_ncols=True, bar_format=BAR_FORMAT,
                        mininterval=0.1 if interactive else self.file_interval)
        self.times.clear()
        self.times.append((int(record["step"]), 0.0))

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Draw the bar's final state and end its line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config (JSON) as the Train tab writes it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from webui.training import ConfigError, load_config, train

    main_process = os.environ.get("RANK", "0") == "0"
    progress = TerminalProgress() if main_process else None
    try:
        config = load_config(args.config)
        config.validate()
        with logging_redirect_tqdm():
            result = train(config, callback=progress)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if progress is not None:
            progress.close()
    summary = {"status": result.status, "step": result.step, "total_steps": result.total_steps,
               "output": result.output, "checkpoint": result.checkpoint,
               "eval_loss_start": result.eval_loss_start, "eval_loss_end": result.eval_loss_end,
               "skipped": [name for name, _ in result.skipped]}
    if main_process:
        print(json.dumps(summary))
    return 0 if result.status == "done" else 3


if __name__ == "__main__":
    sys.exit(main())
