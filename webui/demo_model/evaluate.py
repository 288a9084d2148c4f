"""Measure the demo model: prompt adherence over fixed prompt/seed pairs and VAE fidelity.

    python -m webui.demo_model.evaluate --model models/demo/easel-shapes [--pairs 64]

Prints, over ``--pairs`` fixed (caption, seed) pairs at CFG 5 and 20 Euler steps, the
fraction of images whose shape colour and background colour both match the prompt, whose
shape matches and whose size matches (judged by :mod:`webui.demo_model.judge`), and the
VAE's reconstruction PSNR on held-out images.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from webui.demo_model.judge import judge
from webui.demo_model.shapes import parse_caption, sample

EVAL_SEED = 999_001  # held out: training uses seeds derived from the config seed (0, 1, 2 by default)


def eval_prompts(count: int) -> list[tuple[str, int]]:
    """The fixed (caption, image seed) pairs of the adherence measure."""
    return [(sample(EVAL_SEED, index)[1], 1000 + index) for index in range(count)]


def prompt_adherence(pipe, count: int = 64, steps: int = 20, cfg: float = 5.0) -> dict[str, float]:
    """Fractions of images matching their prompt (colours, shape, size)."""
    hits = {"colours": 0, "shape": 0, "size": 0}
    for caption, seed in eval_prompts(count):
        image = pipe(caption, num_inference_steps=steps, guidance_scale=cfg,
                     generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        verdict = judge(image).matches(parse_caption(caption))
        for key in hits:
            hits[key] += verdict[key]
    return {key: value / count for key, value in hits.items()}


def vae_psnr(vae, count: int = 32, size: int = 128) -> float:
    """Mean PSNR (dB) of VAE reconstructions of held-out images."""
    values = []
    with torch.no_grad():
        for index in range(count):
            image, _, _ = sample(EVAL_SEED + 1, index, size)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            pixels = pixels.to(vae.dtype)
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.float().clamp(-1, 1)
            mse = float(((decoded - pixels.float()) / 2).pow(2).mean())
            values.append(10 * math.log10(1.0 / max(mse, 1e-12)))
    return float(np.mean(values))


def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description="Prompt adherence and VAE fidelity of the demo model.")
    parser.add_argument("--model", type=Path, default=Path("models/demo/easel-shapes"))
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    args = parser.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    scores = prompt_adherence(pipe, args.pairs, args.steps, args.cfg)
    size_mb = sum(p.stat().st_size for p in args.model.rglob("*") if p.is_file()) / 1e6
    print(f"model {args.model} ({size_mb:.1f} MB), {args.pairs} prompt/seed pairs, CFG {args.cfg}, {args.steps} steps")
    print(f"colours (shape and background) match: {scores['colours']:.3f}")
    print(f"shape matches: {scores['shape']:.3f}")
    print(f"size matches: {scores['size']:.3f}")
    print(f"VAE reconstruction PSNR on held-out images: {vae_psnr(pipe.vae):.2f} dB")


if __name__ == "__main__":
    main()
