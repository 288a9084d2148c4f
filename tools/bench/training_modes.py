"""LoRA vs full fine-tune on a tiny model: wall time, output size, checkpoint size, eval loss.

``python -m tools.bench.training_modes [--model tiny] [--steps 50]`` runs ``python -m
webui.train`` twice in a subprocess (mode "lora", then mode "full" with EMA) on 4 random
64x64 images in a temporary folder and prints one line per mode (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_dataset(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        array = np.zeros((80, 96, 3), np.uint8)
        array[:, :, i % 3] = 200
        array[20:60, 30:70] = rng.integers(0, 255, 3)
        Image.fromarray(array).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a photo of sks thing {i}")
    return folder


def main(argv: list[str] | None = None) -> int:
    from webui.training import TrainConfig, save_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        make_dataset(base / "data")
        for mode in ("lora", "full"):
            config = TrainConfig(model=args.model, models_dir=str(base / "models"), dataset_dir=str(base / "data"),
                                 output_name=f"cmp_{mode}", run_dir=str(base / f"run-{mode}"), resolution=64, rank=4,
                                 alpha=4, learning_rate=1e-3 if mode == "lora" else 1e-4, max_steps=args.steps,
                                 batch_size=2, checkpoint_every=max(1, args.steps // 2), seed=1, device=args.device,
                                 mode=mode, use_ema=mode == "full")
            path = save_config(config, base / f"{mode}.json")
            started = time.time()
            done = subprocess.run([sys.executable, "-m", "webui.train", "--config", str(path)], capture_output=True,
                                  text=True)
            wall = time.time() - started
            if done.returncode != 0:
                print(f"{mode}: failed ({done.returncode})\n{done.stderr[-2000:]}")
                return 1
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            target = Path(summary["output"])
            if target.is_dir():
                size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
                sub = "transformer" if (target / "transformer").is_dir() else "unet"
                trained = sum(f.stat().st_size for f in (target / sub).rglob("*.safetensors"))
            else:
                size = trained = target.stat().st_size
            kept = sum(f.stat().st_size for f in (base / f"run-{mode}" / "checkpoints").glob("*.pt"))
            print(f"{mode}: {wall:.1f} s wall for {args.steps} steps, output {size / 1e6:.2f} MB (trained part "
                  f"{trained / 1e6:.3f} MB), checkpoints kept {kept / 1e6:.2f} MB, eval loss "
                  f"{summary['eval_loss_start']:.4f} -> {summary['eval_loss_end']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
