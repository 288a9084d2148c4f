"""Ratio of an image job through Easel's queue and generation path to the same call on bare diffusers.

    python3 -m tools.bench.overhead [--task txt2img|img2img] [--model tiny] [--size 512] [--steps 20] [--runs 5]

Both paths use the same loaded pipeline, sampler, seed and settings; runs alternate
between the two so drift hits both; the ratio of medians and the median of the
paired ratios are printed. Easel's path
includes everything a UI call does (the queue, its worker thread, the hooks, decoding the
request's PNG for img2img) except writing the PNG (``--save`` adds that too). img2img runs
at ``--strength`` (0.75) from a fixed picture on both paths.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="txt2img", choices=("txt2img", "img2img"))
    parser.add_argument("--strength", type=float, default=0.75, help="img2img's denoising strength")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--save", action="store_true", help="also write the PNG on Easel's path")
    args = parser.parse_args()

    import torch

    from webui.app import AppOptions, create_context
    from PIL import Image, ImageDraw

    from webui.jobs import GenerationRequest, image_to_png
    from webui.pipelines.schedulers import make_scheduler
    from webui.tasks import task_pipeline

    picture = Image.new("RGB", (args.size, args.size), (30, 60, 200))
    ImageDraw.Draw(picture).ellipse((args.size // 4, args.size // 4, 3 * args.size // 4, 3 * args.size // 4),
                                    fill=(220, 30, 30))

    with tempfile.TemporaryDirectory() as tmp:
        context = create_context(AppOptions(models_dir=Path(tmp) / "models", outputs_dir=Path(tmp) / "outputs",
                                            data_dir=Path(tmp) / "data", device="auto", entry_points=False))
        request = GenerationRequest(prompt="a small red circle on a blue background", negative_prompt="",
                                    model=args.model, steps=args.steps, cfg_scale=7.0, width=args.size,
                                    height=args.size, seed=1, sampler=args.sampler, save=args.save,
                                    task=args.task, denoising_strength=args.strength,
                                    init_image=image_to_png(picture) if args.task == "img2img" else None)
        with context.pipelines.use(args.model) as model:
            pipe, family, base_config = task_pipeline(model, args.task), model.family, model.base_scheduler_config
        task_arguments = (dict(width=args.size, height=args.size) if args.task == "txt2img"
                          else dict(image=picture, strength=args.strength))

        def bare() -> None:
            pipe.scheduler = make_scheduler(base_config, args.sampler, "Automatic", family)
            pipe(prompt=request.prompt, negative_prompt=None, num_inference_steps=args.steps, guidance_scale=7.0,
                 generator=torch.Generator("cpu").manual_seed(1), **task_arguments)

        def easel() -> None:
            context.generate(request)

        pipe.set_progress_bar_config(disable=True)
        bare()
        easel()  # warm-up of both paths
        bare_times, easel_times = [], []
        for _ in range(args.runs):
            for target, times in ((bare, bare_times), (easel, easel_times)):
                started = time.perf_counter()
                target()
                times.append(time.perf_counter() - started)
        bare_median, easel_median = statistics.median(bare_times), statistics.median(easel_times)
        pair_ratios = [e / b for e, b in zip(easel_times, bare_times)]
        print(f"{args.task}, model {args.model} {args.size}x{args.size} {args.steps} steps {args.sampler} on {model.device}, "
              f"{args.runs} runs each")
        print(f"bare diffusers median: {bare_median:.3f} s")
        print(f"through Easel median:  {easel_median:.3f} s")
        print(f"ratio of medians Easel / bare: {easel_median / bare_median:.3f}")
        print(f"median of paired ratios:      {statistics.median(pair_ratios):.3f}")


if __name__ == "__main__":
    main()
