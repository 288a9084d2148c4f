"""Measure the demo model: prompt adherence over fixed prompt/seed pairs and VAE fidelity.

    python -m tools.demo_model.evaluate [--model models/demo/easel-shapes] [--pairs 64]
    python -m tools.demo_model.evaluate --profiles none,sliced,vae-sliced,quanto-int8 --pairs 32

Images are drawn through Easel's own generation path (the pipeline manager, the sampler
mapping, every extension's hooks), so what is measured is what a user gets. Prints, over
``--pairs`` fixed (caption, seed) pairs at CFG 5 and 20 Euler steps, the fraction of images
whose shape colour and background colour both match the prompt, whose shape matches and
whose size matches (judged by :mod:`tools.demo_model.judge`), and the VAE's reconstruction
PSNR on held-out images. With ``--profiles`` it repeats the adherence measure under each
memory profile of :mod:`tools.bench.memory` and reports the change against ``none``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from tools.demo_model.judge import judge
from tools.demo_model.shapes import parse_caption, sample

EVAL_SEED = 999_001  # held out: training uses seeds derived from the config seed (0, 1, 2 by default)
EVAL_STEPS = 20
EVAL_CFG = 5.0
EVAL_SIDE = 128

Drawer = Callable[[str, int], Image.Image]


def eval_prompts(count: int) -> list[tuple[str, int]]:
    """The fixed (caption, image seed) pairs of the adherence measure."""
    return [(sample(EVAL_SEED, index)[1], 1000 + index) for index in range(count)]


def easel_drawer(context, model: str, steps: int = EVAL_STEPS, cfg: float = EVAL_CFG,
                 side: int = EVAL_SIDE) -> Drawer:
    """A function drawing (caption, seed) with ``model`` through ``context.generate`` (Euler, no saving)."""
    from webui.jobs import GenerationRequest

    def draw(caption: str, seed: int) -> Image.Image:
        request = GenerationRequest(prompt=caption, model=model, sampler="Euler", steps=steps, cfg_scale=cfg,
                                    width=side, height=side, seed=seed, save=False)
        return context.generate(request).images[0].image

    return draw


def pipeline_drawer(pipe, steps: int = EVAL_STEPS, cfg: float = EVAL_CFG) -> Drawer:
    """A function drawing (caption, seed) with a plain diffusers pipeline (no Easel around it)."""

    def draw(caption: str, seed: int) -> Image.Image:
        return pipe(caption, num_inference_steps=steps, guidance_scale=cfg,
                    generator=torch.Generator("cpu").manual_seed(seed)).images[0]

    return draw


def judgements(draw: Drawer, pairs: list[tuple[str, int]]) -> list[dict[str, bool]]:
    """Per pair, which attributes of its caption the drawn image shows."""
    return [judge(draw(caption, seed)).matches(parse_caption(caption)) for caption, seed in pairs]


def adherence(verdicts: list[dict[str, bool]]) -> dict[str, float]:
    """Fractions of images matching their prompt: colours (shape and background), shape, size."""
    return {key: sum(v[key] for v in verdicts) / max(len(verdicts), 1) for key in ("colours", "shape", "size")}


def vae_psnr(vae, count: int = 32, size: int = EVAL_SIDE) -> float:
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


def folder_size_mb(folder: Path) -> float:
    """Bytes of every file under ``folder``, in MB (10^6)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def profile_context(work: Path, profile: str):
    """A CPU app context on throwaway folders with ``profile``'s settings (see tools.bench.memory)."""
    from webui.app import AppOptions, create_context
    from tools.bench.memory import PROFILES

    options = AppOptions(models_dir=work / "models", outputs_dir=work / "outputs", data_dir=work / f"data-{profile}",
                         device="cpu", entry_points=False, max_loaded=1,
                         setting_overrides=dict(PROFILES[profile]["settings"]))
    return create_context(options)


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKL

    from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

    parser = argparse.ArgumentParser(description="Prompt adherence and VAE fidelity of the demo model.")
    parser.add_argument("--model", default=DEMO_MODEL_NAME, help="a model name Easel lists (default: the demo)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=EVAL_STEPS)
    parser.add_argument("--cfg", type=float, default=EVAL_CFG)
    parser.add_argument("--profiles", default="none", help="comma list of tools.bench.memory profiles")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pairs = eval_prompts(args.pairs)
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for profile in [p.strip() for p in args.profiles.split(",") if p.strip()]:
            context = profile_context(Path(work), profile)
            with context.pipelines.use(args.model) as loaded:  # one line per profile, not a bar per image
                loaded.pipeline.set_progress_bar_config(disable=True)
            rows[profile] = adherence(judgements(easel_drawer(context, args.model, args.steps, args.cfg), pairs))
            context.pipelines.unload_all()
    print(f"model {args.model}, {args.pairs} prompt/seed pairs, CFG {args.cfg}, {args.steps} Euler steps, "
          f"{EVAL_SIDE}x{EVAL_SIDE}")
    base = rows.get("none")
    for profile, scores in rows.items():
        change = "" if base is None or profile == "none" else "  (change vs none: " + ", ".join(
            f"{key} {scores[key] - base[key]:+.3f}" for key in scores) + ")"
        print(f"[{profile}] colours (shape and background) match: {scores['colours']:.3f}  "
              f"shape matches: {scores['shape']:.3f}  size matches: {scores['size']:.3f}{change}")
    if args.model == DEMO_MODEL_NAME:
        vae = AutoencoderKL.from_pretrained(DEMO_MODEL_DIR / "vae", dtype=torch.float32)
        print(f"VAE reconstruction PSNR on held-out images: {vae_psnr(vae):.2f} dB")
        print(f"shipped size: {folder_size_mb(DEMO_MODEL_DIR):.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
