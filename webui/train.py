"""Command line of the LoRA trainer: ``python -m webui.train --config FILE``.

The config file is the JSON the Train tab writes (:mod:`webui.training.config`). Under
``accelerate launch -m webui.train --config FILE`` the same code runs in several processes.
Exit status: 0 done, 3 cancelled (a checkpoint was kept), 2 bad config, 1 failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config (JSON) as the Train tab writes it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from webui.training import ConfigError, load_config, train

    try:
        config = load_config(args.config)
        result = train(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {"status": result.status, "step": result.step, "total_steps": result.total_steps,
               "output": result.output, "checkpoint": result.checkpoint,
               "eval_loss_start": result.eval_loss_start, "eval_loss_end": result.eval_loss_end,
               "skipped": [name for name, _ in result.skipped]}
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0 if result.status == "done" else 3


if __name__ == "__main__":
    sys.exit(main())
