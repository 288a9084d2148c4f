"""Seconds per LoRA training step and peak memory, with a per-stage breakdown from the profiler.

    python3 -m tools.bench.training [--models tiny,tiny-sd3] [--steps 12] [--resolution 64]
                                    [--batch-size 1] [--rank 4] [--gradient-checkpointing]

For each model a short run trains on a throw-away dataset of random images (the trainer of
``webui.training``, in this process). s/step is the median over steps 3..N; the profiler
records steps 4..N-1 (the set-up, the evaluation passes and warm-up are left out). Stages are the trainer's ``record_function`` ranges: ``data`` (images/latents and
text conditioning, cached after the first epoch), ``forward``, ``backward``, ``optimizer``
(clip + AdamW + LR scheduler), as mean milliseconds per step of CPU time (CUDA time too on a
GPU). Peak memory: the process's peak RSS on the CPU, ``torch.cuda.max_memory_allocated``
on CUDA. ``--models`` takes any model name Easel lists (hub ids need the network or cache).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STAGES = ("data", "forward", "backward", "optimizer")


def _dataset(folder: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a photo of sks thing number {i}")


def bench(model: str, args: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from webui.training.config import TrainConfig
    from webui.training.trainer import LoraTrainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _dataset(tmp_path / "data", 4, args.resolution)
        config = TrainConfig(model=model, models_dir=str(tmp_path / "models"), dataset_dir=str(tmp_path / "data"),
                             output_name="bench", run_dir=str(tmp_path / "run"), resolution=args.resolution,
                             rank=args.rank, alpha=args.rank, max_steps=args.steps, batch_size=args.batch_size,
                             checkpoint_every=0, gradient_checkpointing=args.gradient_checkpointing,
                             mixed_precision=args.mixed_precision, device=args.device, eval_examples=1)
        step_times: list[float] = []
        last = {"seconds": 0.0}
        holder: dict = {}

        def on_event(event: dict) -> None:
            if event["event"] == "step":
                step_times.append(event["seconds"] - last["seconds"])
                last["seconds"] = event["seconds"]
                holder["prof"].step()

        cuda = torch.cuda.is_available() and args.device != "cpu"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = LoraTrainer(config, callback=on_event)
        active = args.steps - 4  # steps 1-2 (and set-up, eval) skipped, 3 warm-up, the last one (and eval) out
        with profile(activities=activities, schedule=schedule(wait=2, warmup=1, active=active, repeat=1)) as prof:
            holder["prof"] = prof
            trainer.run()
        measured = step_times[2:] or step_times
        totals = {key.key: key for key in prof.key_averages() if key.key in STAGES}
        steps = active
        stages = {}
        for stage in STAGES:
            if stage in totals:
                item = totals[stage]
                stages[stage] = {"cpu_ms": item.cpu_time_total / 1000 / steps,
                                 "cuda_ms": getattr(item, "device_time_total", 0) / 1000 / steps if cuda else None}
        peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {"model": model, "family": trainer.family, "s_per_step": statistics.median(measured),
                "peak_mib": peak, "peak_kind": "cuda allocated" if cuda else "process RSS", "stages": stages,
                "device": str(trainer.device)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,tiny-sd3")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.steps < 6:
        parser.error("--steps must be at least 6 (2 skipped, 1 warm-up, the last one left out)")
    for model in args.models.split(","):
        result = bench(model.strip(), args)
        stages = ", ".join(f"{name} {value['cpu_ms']:.1f} ms" + (f" (cuda {value['cuda_ms']:.1f})"
                                                                 if value["cuda_ms"] else "")
                           for name, value in result["stages"].items())
        print(f"{result['model']} ({result['family']}, {result['device']}, {args.resolution}px, batch "
              f"{args.batch_size}, rank {args.rank}): {result['s_per_step']:.3f} s/step, peak "
              f"{result['peak_mib']:.0f} MiB ({result['peak_kind']}); per step: {stages}")


if __name__ == "__main__":
    main()
