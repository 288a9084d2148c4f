"""Train the offline demo model from scratch, deterministically, on the CPU.

    python -m tools.demo_model.train --out models/demo/easel-shapes --work-dir data/demo-train

Stages (each resumable from its last checkpoint in ``--work-dir``):

1. VAE (AutoencoderKL, real factor 8) on 64 px crops, then on full images; L1 + MSE on the
   decoded posterior mean + a tiny KL.
2. Latents of ``num_latents`` images encoded once; ``scaling_factor`` = 1 / their std.
3. UNet with cross-attention + a small CLIP text encoder (word-level tokenizer), epsilon
   prediction on the standard SD noise schedule, min-SNR weighting, caption dropout, EMA,
   AdamW with warm-up and cosine decay.
4. The VAE decoder alone, cosine-decayed (the encoder frozen, so the latents stay valid).
5. The EMA weights saved as a ``StableDiffusionPipeline`` (fp16 safetensors) with the
   training config and seed in ``training.json`` and in every safetensors header.

All data come from :mod:`tools.demo_model.shapes` and all noise from generators seeded by
(seed, stage, step), so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tools.demo_model.shapes import sample
from tools.demo_model.tokenizer import write_tokenizer
from webui.pipelines.text_encoder_keys import save_pipeline

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass
class DemoTrainConfig:
    """Every knob of a demo-model training run (recorded with the weights)."""

    seed: int = 0
    image_size: int = 128
    vae_crop_steps: int = 2500
    vae_full_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    num_latents: int = 10000
    unet_steps: int = 2500
    unet_batch: int = 48
    unet_lr: float = 5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250
    threads: int = 2
    vae_decoder_steps: int = 1500  # decoder-only fine-tune after the UNet (encoder frozen: latents stay valid); 0: off
    vae_decoder_lr: float = 5e-4  # cosine decay to 0

    @classmethod
    def quick(cls) -> "DemoTrainConfig":
        """A seconds-long configuration for tests (the pipeline runs, the model learns little)."""
        return cls(vae_crop_steps=3, vae_full_steps=2, vae_batch=2, num_latents=16, unet_steps=4, unet_batch=4,
                   warmup_steps=1, checkpoint_every=2, threads=1, vae_decoder_steps=3)


def build_models(config: DemoTrainConfig, vocab_size: int, token_ids: dict[str, int]):
    """VAE, text encoder and UNet of the demo architecture, initialised from the seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(16, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=config.image_size,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"],
        pad_token_id=token_ids["pad"], projection_dim=128,
    ))
    unet = UNet2DConditionModel(
        sample_size=config.image_size // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128), norm_num_groups=32, cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    return vae, text_encoder, unet


def _images(seed: int, start: int, count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    pictures, captions = [], []
    for index in range(start, start + count):
        image, caption, _ = sample(seed, index, size)
        pictures.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        captions.append(caption)
    return torch.stack(pictures), captions


def _save_atomic(payload: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class StageRunner:
    """Runs one resumable stage: loads its checkpoint, steps, saves every N steps."""

    def __init__(self, work_dir: Path, name: str, config: DemoTrainConfig):
        self.path = Path(work_dir) / f"{name}.pt"
        self.name = name
        self.config = config

    def run(self, modules: dict[str, torch.nn.Module], optimizer, scheduler, total: int, step_fn,
            stop_after: int | None = None, extra_state=None) -> bool:
        """Train until ``total`` steps (or ``stop_after`` more); True when the stage is complete."""
        start = 0
        if self.path.exists():
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            for key, module in modules.items():
                module.load_state_dict(state["modules"][key])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            if extra_state is not None:
                extra_state.load_state_dict(state["extra"])
            start = state["step"]
        end = total if stop_after is None else min(total, start + stop_after)
        bar = tqdm(range(start, end), initial=start, total=total, desc=self.name, leave=False)
        step = start
        for step in bar:
            loss = step_fn(step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if extra_state is not None:
                extra_state.step(modules)
            bar.set_postfix(loss=f"{loss:.4f}")
            done = step + 1
            if done % self.config.checkpoint_every == 0 or done == end:
                _save_atomic({
                    "step": done,
                    "modules": {key: module.state_dict() for key, module in modules.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "extra": extra_state.state_dict() if extra_state is not None else None,
                }, self.path)
        return max(start, end) >= total


class _EMA:
    """EMA of several modules (diffusers' EMAModel per module), checkpointable."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        from diffusers.training_utils import EMAModel

        self.models = {key: EMAModel(module.parameters(), decay=decay, min_decay=0.0, use_ema_warmup=False)
                      for key, module in modules.items()}

    def step(self, modules: dict[str, torch.nn.Module]) -> None:
        for key, ema in self.models.items():
            ema.step(modules[key].parameters())

    def state_dict(self) -> dict:
        return {key: ema.state_dict() for key, ema in self.models.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, ema in self.models.items():
            ema.load_state_dict(state[key])

    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        for key, ema in self.models.items():
            ema.copy_to(modules[key].parameters())


def train(config: DemoTrainConfig, out_dir: Path, work_dir: Path, stop_after: int | None = None) -> Path | None:
    """Run (or resume) every stage; returns the saved pipeline folder, or None when stopped early."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_snr

    torch.set_num_threads(config.threads)
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "config.json").write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")
    tokenizer = write_tokenizer(work_dir / "tokenizer")
    token_ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    vae, text_encoder, unet = build_models(config, len(tokenizer), token_ids)
    size = config.image_size

    # 1. VAE: crops, then full images.
    vae_optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)

    def vae_step(step: int, crop: bool) -> float:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 2 + int(crop))
        images, _ = _images(config.seed + 1, step * config.vae_batch, config.vae_batch, size)
        if crop:
            top, left = torch.randint(0, size - 64 + 1, (2,), generator=generator).tolist()
            images = images[:, :, top:top + 64, left:left + 64]
        posterior = vae.encode(images).latent_dist
        # The posterior mean, not a sample: with logvar starting at 0 a sample adds unit noise that
        # kept the first full run at 16 dB; the mean breaks through past ~800 steps (docs/benchmarks.md).
        decoded = vae.decode(posterior.mean).sample
        loss = F.l1_loss(decoded, images) + F.mse_loss(decoded, images) + 1e-6 * posterior.kl().mean()
        loss.backward()
        return float(loss.detach())

    vae.train()
    for name, steps, crop in (("vae-crops", config.vae_crop_steps, True), ("vae-full", config.vae_full_steps, False)):
        runner = StageRunner(work_dir, name, config)
        if not runner.run({"vae": vae}, vae_optimizer, None, steps, lambda s, c=crop: vae_step(s, c),
                          stop_after=stop_after):
            return None
    vae.eval().requires_grad_(False)

    # 2. Latents, encoded once.
    latents_path = work_dir / "latents.pt"
    if latents_path.exists():
        cached = torch.load(latents_path, weights_only=False)
        latents, captions, scaling = cached["latents"], cached["captions"], cached["scaling"]
    else:
        chunks, captions = [], []
        with torch.no_grad():
            for start in tqdm(range(0, config.num_latents, 64), desc="encode", leave=False):
                images, texts = _images(config.seed + 2, start, min(64, config.num_latents - start), size)
                chunks.append(vae.encode(images).latent_dist.mean)
                captions += texts
        latents = torch.cat(chunks)
        scaling = float(1.0 / latents.std())
        _save_atomic({"latents": latents, "captions": captions, "scaling": scaling}, latents_path)
    vae.register_to_config(scaling_factor=scaling)

    # 3. UNet + text encoder.
    noise_scheduler = DDPMScheduler(**SD_BETAS, prediction_type="epsilon")
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=config.warmup_steps,
                                 num_training_steps=config.unet_steps)
    modules = {"unet": unet, "text_encoder": text_encoder}
    ema = _EMA(modules, config.ema_decay)
    unet.train()
    text_encoder.train()

    def unet_step(step: int) -> float:
        generator = torch.Generator().manual_seed(config.seed * 7_000_003 + step)
        picks = torch.randint(0, len(captions), (config.unet_batch,), generator=generator)
        batch = latents[picks] * scaling
        texts = ["" if torch.rand((), generator=generator) < config.caption_dropout else captions[i]
                 for i in picks.tolist()]
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        noisy = noise_scheduler.add_noise(batch, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=config.min_snr_gamma) / snr
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        return float(loss.detach())

    runner = StageRunner(work_dir, "unet", config)
    if not runner.run(modules, optimizer, lr_scheduler, config.unet_steps, unet_step, stop_after=stop_after,
                      extra_state=ema):
        return None

    # 4. The decoder alone, with a decaying learning rate: the constant-rate VAE stages plateau
    # near 29 dB; the encoder stays frozen, so the latents the UNet learnt stay exactly valid.
    decoder_parameters = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for parameter in decoder_parameters:
        parameter.requires_grad_(True)
    decoder_optimizer = torch.optim.AdamW(decoder_parameters, lr=config.vae_decoder_lr)
    decoder_scheduler = get_scheduler("cosine", decoder_optimizer, num_warmup_steps=0,
                                      num_training_steps=config.vae_decoder_steps)

    def decoder_step(step: int) -> float:
        images, _ = _images(config.seed + 3, step * config.vae_batch, config.vae_batch, size)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean
        decoded = vae.decode(latents).sample
        loss = F.l1_loss(decoded, images) + F.mse_loss(decoded, images)
        loss.backward()
        return float(loss.detach())

    runner = StageRunner(work_dir, "vae-decoder", config)
    if not runner.run({"vae": vae}, decoder_optimizer, decoder_scheduler, config.vae_decoder_steps, decoder_step,
                      stop_after=stop_after):
        return None
    vae.requires_grad_(False)

    # 5. EMA weights, saved as a pipeline. The tokenizer is written afresh: the one used for
    # training carries its last padding/truncation call into tokenizer.json, and a run resumed
    # after the UNet stage never makes that call, so the saved file would depend on resuming.
    ema.copy_to(modules)
    tokenizer = write_tokenizer(work_dir / "tokenizer")
    scheduler = EulerDiscreteScheduler(**SD_BETAS, prediction_type="epsilon", timestep_spacing="leading",
                                       steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    # text encoder under the official key names (text_model.*): transformers 4 loaders read only those
    save_pipeline(pipe.to(torch.float16), out_dir)
    record = {"config": asdict(config), "seed": config.seed, "scaling_factor": scaling,
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "trainer": "tools.demo_model.train"}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    _record_in_headers(out_dir, record)
    return out_dir


def _record_in_headers(out_dir: Path, record: dict) -> None:
    """Write the training record into every weights file's safetensors header too."""
    from safetensors.torch import load_file, save_file

    text = json.dumps(record, sort_keys=True)
    for path in sorted(Path(out_dir).rglob("*.safetensors")):
        tensors = load_file(str(path))
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "easel_demo_training": text})
        os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train Easel's offline demo model (shapes) on the CPU.")
    parser.add_argument("--out", type=Path, default=Path("models/demo/easel-shapes"))
    parser.add_argument("--work-dir", type=Path, default=Path("data/demo-train"))
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke configuration")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of a stage")
    for field in fields(DemoTrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None)
    args = parser.parse_args()
    config = DemoTrainConfig.quick() if args.quick else DemoTrainConfig()
    for field in fields(DemoTrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            setattr(config, field.name, value)
    saved = train(config, args.out, args.work_dir, stop_after=args.stop_after)
    print(f"saved {saved}" if saved else "stopped; run the same command again to resume")


if __name__ == "__main__":
    main()
