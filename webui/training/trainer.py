"""The LoRA trainer: SD1/SD2/SDXL (epsilon or v-prediction) and SD3 (flow matching), on accelerate.

One function, :func:`train`, runs a whole job from a :class:`TrainConfig`. It runs the same
in one process (tests, ``python -m webui.train``) and under ``accelerate launch`` (several
processes: each takes its own share of every global batch; gradients are averaged by DDP).

Reproducibility and resume: every random draw of a step (which examples, flips, noise,
timesteps) comes from a generator seeded from ``(seed, step)``, not from a running global
state, and a checkpoint holds the LoRA weights, the optimizer and the LR scheduler. Resuming
from the checkpoint of step ``k`` therefore gives the same weights as a run that never
stopped.

What a run writes in its run folder (``config.run_path``):

* ``progress.jsonl``: one JSON object per event (``start``, ``skipped``, ``step``, ``eval``,
  ``checkpoint``, ``validation``, ``done`` / ``cancelled`` / ``error``); the Train tab
  follows it;
* ``checkpoints/step-000100.pt`` (atomic writes, the last ``keep_checkpoints`` kept);
* ``class_images/`` (prior preservation, generated once and reused), ``validation/``;
* a file ``STOP`` (written at any time, even before training starts) makes the run save a
  checkpoint at the next step boundary, delete the file and stop (the tab's Cancel).

Test hook: when the environment names a hold file (``EASEL_TRAIN_HOLD_FILE``, inherited by the
trainer's process from the app) and that file exists, the run waits after logging any step at
or past the step number written in the file (empty: every step) until the file is deleted or a
stop is requested. Tests use it to act on a run that is known to be at a given step (attach a
second page, cancel) instead of racing the trainer's speed.

Full fine-tune (``mode="full"``): the whole UNet / SD3 transformer trains in fp32 (autocast for
mixed precision), optionally with an EMA of its weights (``diffusers.training_utils.EMAModel``,
kept in the checkpoints and saved as the model); the result is the base pipeline with the
trained denoiser, saved as a diffusers folder ``<models_dir>/Stable-diffusion/<output_name>/``
(``save_pretrained(safe_serialization=True)`` with the text encoders under the official
``text_model.*`` key names, staged and swapped in) that txt2img lists, and/or, as
``full_output_format`` asks, as one original-layout checkpoint ``<output_name>.safetensors``.

The LoRA goes to ``<models_dir>/Lora/<output_name>.safetensors``: kohya keys (``lora_unet_...``,
``lora_down``/``lora_up``, ``.alpha``) for SD1/SD2/SDXL, which AUTOMATIC1111, ComfyUI and
diffusers read; diffusers/peft keys (``transformer.…lora_A/B``, alpha folded into B) for SD3.
The safetensors header carries the run's metadata (kohya's ``ss_*`` keys and ``easel_*``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from webui.pipelines.families import FAMILY_TABLE, family_spec
from webui.training.config import TEXT_ENCODER_TARGETS, ConfigError, TrainConfig, atomic_write_bytes
from webui.training.dataset import Dataset, image_tensor, load_dataset, make_buckets, nearest_bucket, open_rgb

log = logging.getLogger(__name__)

TRAINABLE_FAMILIES = tuple(name for name, family in FAMILY_TABLE.items() if family.trainable)
HOLD_FILE_ENV = "EASEL_TRAIN_HOLD_FILE"  # test hook, see the module docstring
HOLD_POLL_SECONDS = 0.05


class StopTraining(Exception):
    pass


@dataclass
class TrainResult:
    status: str                      # done, cancelled
    step: int
    total_steps: int
    output: str | None = None
    checkpoint: str | None = None
    eval_loss_start: float | None = None  # None: evaluation off (eval_examples 0)
    eval_loss_end: float | None = None
    losses: list[float] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    validation_images: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# events


class EventLog:
    """Appends events to ``progress.jsonl`` (main process only) and forwards them to a callback."""

    def __init__(self, path: Path, enabled: bool, callback: Callable[[dict], None] | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.callback = callback

    def __call__(self, event: str, **data: Any) -> None:
        record = {"event": event, "time": time.time(), **data}
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
        if self.callback is not None:
            self.callback(record)


# ------------------------------------------------------------------------------------------
# model


def qlora_reason(device: torch.device) -> str | None:
    """Why an NF4-quantized base (QLoRA) cannot train on ``device`` (None when it can)."""
    import importlib.util

    if device.type != "cuda":
        return f"bitsandbytes NF4 needs CUDA (this device is {device.type})"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def quantized_denoiser(pipe, source, family: str, compute_dtype: torch.dtype):
    """The pipeline's UNet / SD3 transformer loaded again with bitsandbytes NF4 (diffusers'
    ``BitsAndBytesConfig``; it quantizes while loading, onto the current CUDA device). Diffusers
    folders and hub models load from their ``unet``/``transformer`` subfolder; other sources
    (single files, the built-in tiny models) are first written to a temporary diffusers folder."""
    import tempfile

    from diffusers import BitsAndBytesConfig

    name = family_spec(family).denoiser
    current = getattr(pipe, name)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute_dtype)
    kwargs = dict(dtype=compute_dtype, quantization_config=quantization)
    if source.kind in ("folder", "hub"):
        return type(current).from_pretrained(source.location, subfolder=name, **kwargs)
    with tempfile.TemporaryDirectory(prefix="easel-qlora-") as tmp:
        current.save_pretrained(tmp, safe_serialization=True)
        return type(current).from_pretrained(tmp, **kwargs)


def resolve_source(config: TrainConfig):
    """The ModelSource of ``config.model``: a name Easel lists, or an absolute folder/file path."""
    from webui.pipelines.sources import ModelCatalog, ModelSource

    name = config.model
    if Path(name).exists() and Path(name).is_absolute():
        path = Path(name)
        return ModelSource(name=path.name, kind="folder" if path.is_dir() else "file", location=str(path))
    return ModelCatalog(Path(config.models_dir)).resolve(name)


def load_base(config: TrainConfig):
    """(pipeline in fp32 on the CPU, family) for ``config.model``."""
    from webui.pipelines.loaders import detect_family, load_pipeline

    source = resolve_source(config)
    family = detect_family(source)
    if family not in TRAINABLE_FAMILIES:
        raise ConfigError(f"{source.name} is a {family} model; LoRA training supports {', '.join(TRAINABLE_FAMILIES)}")
    return load_pipeline(source, family, torch.float32), family


def _optimizer(config: TrainConfig, groups: list[dict], device: torch.device):
    if config.use_8bit_adam:
        if device.type != "cuda":
            raise ConfigError("8-bit AdamW needs CUDA (bitsandbytes has no CPU optimizer)")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ConfigError("8-bit AdamW needs bitsandbytes, which is not installed "
                              "(pip install bitsandbytes)") from exc
        return bnb.optim.AdamW8bit(groups, weight_decay=config.adam_weight_decay)
    return torch.optim.AdamW(groups, weight_decay=config.adam_weight_decay)


def _draw_generator(config: TrainConfig, *parts: int) -> torch.Generator:
    value = int(config.seed)
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return torch.Generator("cpu").manual_seed(value)


class LoraTrainer:
    """State of one run; see :func:`train`."""

    def __init__(self, config: TrainConfig, callback: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        from accelerate import Accelerator

        config.validate()
        self.config = config
        self.should_stop = should_stop or (lambda: False)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device is 'cuda' but PyTorch sees no CUDA GPU here; use 'auto' or 'cpu'")
        cpu = config.device == "cpu" or not torch.cuda.is_available()
        if config.quantize_base == "nf4":
            reason = qlora_reason(torch.device("cpu") if cpu else torch.device("cuda"))
            if reason:
                raise ConfigError(f"QLoRA (an NF4-quantized base model) is not available: {reason}")
        if config.mixed_precision == "fp16" and cpu:
            raise ConfigError("fp16 mixed precision needs a CUDA GPU; use bf16 or no on the CPU")
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            # accelerate keeps one global state per process; a second run in the same process (tests,
            # the benchmark) with other options would be refused. Single-process: start it afresh.
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)
        self.device = self.accelerator.device
        self.run_path = config.run_path
        self.log = EventLog(self.run_path / "progress.jsonl", self.accelerator.is_main_process, callback)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        if self.accelerator.num_processes > 1 and config.train_text_encoder:
            raise ConfigError("text-encoder LoRA is trained in single-process runs only")

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.config
        self.dataset: Dataset = load_dataset(config.dataset_dir, config.caption_extension, config.use_captions,
                                             config.instance_prompt)
        if self.dataset.skipped:
            self.log("skipped", files=[{"file": name, "reason": why} for name, why in self.dataset.skipped])
            for name, why in self.dataset.skipped:
                log.warning("Skipped %s: %s", name, why)
        square = (config.resolution, config.resolution)
        self.buckets = make_buckets(config.resolution) if config.bucketing else [square]
        self._epoch_plans: dict[int, list[list[int]]] = {}
        if config.mode == "full":
            source = resolve_source(config)
            if source.kind in ("folder", "file") and Path(source.location).resolve() == config.output_file.resolve():
                raise ConfigError(f"The output name {config.output_name!r} is the base model itself; a full "
                                  "fine-tune must not overwrite it: pick another output name")
        self.pipe, self.family = load_base(config)
        self.spec = family_spec(self.family)
        pipe = self.pipe
        pipe.set_progress_bar_config(disable=True)
        if config.quantize_base == "nf4":
            from peft import prepare_model_for_kbit_training

            compute = self.weight_dtype if self.weight_dtype != torch.float32 else torch.bfloat16
            quantized = quantized_denoiser(pipe, resolve_source(config), self.family, compute)
            name = self.spec.denoiser
            setattr(pipe, name, None)
            pipe.register_modules(**{name: quantized})
            # norms and other unquantized weights to fp32, as the diffusers QLoRA scripts do
            prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
        self.denoiser = getattr(pipe, self.spec.denoiser)
        self.text_encoders = [te for te in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None),
                                            getattr(pipe, "text_encoder_3", None)) if te is not None]
        for module in [self.denoiser, pipe.vae, *self.text_encoders]:
            module.requires_grad_(False)
        # frozen weights in the mixed-precision dtype; the VAE stays fp32 (an fp16 VAE gives NaN latents)
        cast = {} if self.weight_dtype == torch.float32 else {"dtype": self.weight_dtype}
        # full fine-tune: the trained weights stay fp32 (autocast computes in the mixed dtype)
        if config.quantize_base == "none":  # a bitsandbytes model is already on its device, and keeps its dtypes
            self.denoiser.to(self.device, **({} if config.mode == "full" else cast))
        for te in self.text_encoders:
            te.to(self.device, **cast)
        pipe.vae.to(self.device)
        self.train_scheduler = self._noise_scheduler()
        if config.prior_preservation:
            self.class_examples = self._class_images()
        else:
            self.class_examples = []
        self.ema = None
        if config.mode == "full":
            self.denoiser.requires_grad_(True)
            self.lora_text_encoders = []
            if config.use_ema:
                from diffusers.training_utils import EMAModel

                self.ema = EMAModel(self.denoiser.parameters(), decay=config.ema_decay)
                self.ema.to(self.device)
        else:
            self._add_lora()
        if config.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            if config.train_text_encoder:
                for te in self.lora_text_encoders:
                    te.gradient_checkpointing_enable()
        self.examples_per_epoch = len(self.dataset.expanded())
        global_batch = config.batch_size * self.accelerator.num_processes * config.gradient_accumulation_steps
        if config.max_steps > 0:
            self.total_steps = config.max_steps
        elif config.bucketing:
            per_step = self.accelerator.num_processes * config.gradient_accumulation_steps
            self.total_steps = max(1, math.ceil(config.epochs * len(self._epoch_plan(0)) / per_step))
        else:
            self.total_steps = max(1, math.ceil(config.epochs * self.examples_per_epoch / global_batch))
        from diffusers.optimization import get_scheduler

        groups = [{"params": [p for p in self.denoiser.parameters() if p.requires_grad], "lr": config.learning_rate}]
        for te in self.lora_text_encoders:
            groups.append({"params": [p for p in te.parameters() if p.requires_grad],
                           "lr": config.text_encoder_lr or config.learning_rate})
        optimizer = _optimizer(config, groups, self.device)
        processes = self.accelerator.num_processes
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                     num_warmup_steps=config.lr_warmup_steps * processes,
                                     num_training_steps=self.total_steps * processes)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.denoiser, optimizer, lr_scheduler)
        self._latent_cache: dict[tuple[str, bool], tuple[torch.Tensor, tuple, tuple]] = {}
        self._text_cache: dict[str, dict[str, torch.Tensor]] = {}

    def _noise_scheduler(self):
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        if self.spec.flow_matching:
            return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def _add_lora(self) -> None:
        from peft import LoraConfig

        config = self.config
        torch.manual_seed(config.seed)  # LoRA A matrices are drawn here: same seed, same start
        try:
            self.denoiser.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                                 target_modules=list(config.target_modules)))
        except ValueError as exc:
            raise ConfigError(f"Target modules {config.target_modules} do not match the model: {exc}") from exc
        self.lora_text_encoders = []
        if config.train_text_encoder:
            clip_encoders = [te for te in self.text_encoders if "CLIP" in type(te).__name__]
            for te in clip_encoders:
                te.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                          target_modules=list(TEXT_ENCODER_TARGETS)))
                self.lora_text_encoders.append(te)
        for module in [self.denoiser, *self.lora_text_encoders]:
            for param in module.parameters():
                if param.requires_grad:
                    param.data = param.data.float()  # trainable LoRA weights in fp32 (no "unscale FP16 gradients")

    def _class_images(self) -> list[Any]:
        """Generate (once) and list the class images for prior preservation."""
        from webui.training.dataset import Example

        config = self.config
        folder = self.run_path / "class_images"
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(folder.glob("*.png"))
        if self.accelerator.is_main_process and len(existing) < config.num_class_images:
            self.log("class_images", have=len(existing), want=config.num_class_images)
            for index in range(len(existing), config.num_class_images):
                generator = torch.Generator("cpu").manual_seed(config.seed + 10_000 + index)
                with torch.no_grad(), self.accelerator.autocast():
                    image = self.pipe(config.class_prompt, num_inference_steps=config.class_steps,
                                      width=config.resolution, height=config.resolution, generator=generator).images[0]
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                atomic_write_bytes(folder / f"class-{index:05d}.png", buffer.getvalue())
        self.accelerator.wait_for_everyone()
        paths = sorted(folder.glob("*.png"))[: config.num_class_images]
        return [Example(path=path, caption=config.class_prompt) for path in paths]

    # --- data ----------------------------------------------------------------------------

    def _encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        pipe, device = self.pipe, self.device
        encoding = self.spec.text_encoding
        if encoding == "clip":
            embeds, _ = pipe.encode_prompt(captions, device, 1, False)
            return {"embeds": embeds}
        if encoding == "clip-pair":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            return {"embeds": embeds, "pooled": pooled}
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device=device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}

    def text_conditioning(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.config.train_text_encoder or not self.config.cache_text_embeddings:
            with self.accelerator.autocast():
                return self._encode_text(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            with torch.no_grad(), self.accelerator.autocast():
                encoded = self._encode_text(missing)
            for i, caption in enumerate(missing):
                self._text_cache[caption] = {k: v[i: i + 1].detach() for k, v in encoded.items()}
        return {key: torch.cat([self._text_cache[c][key] for c in captions]) for key in self._text_cache[captions[0]]}

    def bucket_of(self, example) -> tuple[int, int]:
        """(width, height) this example trains at."""
        if not self.config.bucketing:
            return (self.config.resolution, self.config.resolution)
        return nearest_bucket(example.size, self.buckets)

    @torch.no_grad()
    def _encode_image(self, example, flip: bool, crop_generator: torch.Generator | None):
        bucket = self.bucket_of(example)
        pixels, original, crop = image_tensor(open_rgb(example.path), self.config.resolution,
                                              self.config.center_crop, flip, crop_generator, size=bucket)
        vae = self.pipe.vae
        latents = vae.encode(pixels[None].to(self.device, torch.float32)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
        return latents[0], original, crop, (bucket[1], bucket[0])

    def latents_of(self, example, flip: bool, crop_generator: torch.Generator | None):
        key = (str(example.path), flip)
        if self.config.cache_latents and (self.config.center_crop or crop_generator is None):
            if key not in self._latent_cache:
                self._latent_cache[key] = self._encode_image(example, flip, None)
            return self._latent_cache[key]
        return self._encode_image(example, flip, crop_generator)

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        """Bucketing: the batches (expanded-list positions, one bucket each) of one epoch, shuffled;
        a bucket's last incomplete batch is dropped."""
        if epoch not in self._epoch_plans:
            config = self.config
            expanded = self.dataset.expanded()
            order = torch.randperm(len(expanded), generator=_draw_generator(config, 1, epoch)).tolist()
            queues: dict[tuple[int, int], list[int]] = {}
            batches: list[list[int]] = []
            for position in order:
                queue = queues.setdefault(self.bucket_of(self.dataset.examples[expanded[position]]), [])
                queue.append(position)
                if len(queue) == config.batch_size:
                    batches.append(list(queue))
                    queue.clear()
            shuffle = torch.randperm(len(batches), generator=_draw_generator(config, 5, epoch)).tolist()
            self._epoch_plans[epoch] = [batches[i] for i in shuffle]
            if not batches:
                raise ConfigError(f"No aspect-ratio bucket holds {config.batch_size} images; lower the batch "
                                  "size or turn bucketing off")
        return self._epoch_plans[epoch]

    def _bucketed_examples(self, draw: int) -> list[tuple[Any, bool, torch.Generator]]:
        config = self.config
        expanded = self.dataset.expanded()
        number = draw * self.accelerator.num_processes + self.accelerator.process_index
        epoch = 0
        while number >= len(self._epoch_plan(epoch)):
            number -= len(self._epoch_plan(epoch))
            epoch += 1
        chosen = []
        for position in self._epoch_plan(epoch)[number]:
            pick = _draw_generator(config, 2, epoch, position)
            flip = bool(config.random_flip and torch.rand((), generator=pick).item() < 0.5)
            chosen.append((self.dataset.examples[expanded[position]], flip, pick))
        return chosen

    def batch_examples(self, draw: int) -> list[tuple[Any, bool, torch.Generator]]:
        """The examples of this process for global draw number ``draw`` (deterministic)."""
        config = self.config
        if config.bucketing:
            return self._bucketed_examples(draw)
        order_len = self.examples_per_epoch
        expanded = self.dataset.expanded()
        global_batch = config.batch_size * self.accelerator.num_processes
        chosen = []
        for j in range(config.batch_size):
            position = draw * global_batch + self.accelerator.process_index * config.batch_size + j
            epoch, offset = divmod(position, order_len)
            order = torch.randperm(order_len, generator=_draw_generator(config, 1, epoch)).tolist()
            pick = _draw_generator(config, 2, position)
            flip = bool(config.random_flip and torch.rand((), generator=pick).item() < 0.5)
            chosen.append((self.dataset.examples[expanded[order[offset]]], flip, pick))
        return chosen

    # --- loss ----------------------------------------------------------------------------

    def _sdxl_time_ids(self, originals, crops, targets) -> torch.Tensor:
        rows = [list(original) + list(crop) + list(target) for original, crop, target in zip(originals, crops, targets)]
        return torch.tensor(rows, dtype=self.weight_dtype, device=self.device)

    def loss_of(self, examples: list[tuple[Any, bool, torch.Generator]], generator: torch.Generator,
                model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example losses (before min-SNR weighting is applied to the mean) and the weighted mean."""
        model = model or self.model
        config = self.config
        with record_function("data"):
            encoded = [self.latents_of(example, flip, crop_gen) for example, flip, crop_gen in examples]
            latents = torch.stack([e[0] for e in encoded]).to(self.device, torch.float32)
            cond = self.text_conditioning([example.caption for example, _, _ in examples])
        with record_function("forward"):
            return self._denoise_loss(model, latents, cond, encoded, generator)

    def _denoise_loss(self, model, latents, cond, encoded, generator):
        config = self.config
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1),
                                                              generator=generator).to(self.device)
        scheduler = self.train_scheduler
        if self.spec.flow_matching:
            u = torch.sigmoid(torch.randn((bsz,), generator=generator)).to(self.device)  # logit-normal
            shift = float(getattr(scheduler.config, "shift", 1.0) or 1.0)
            sigmas = shift * u / (1 + (shift - 1) * u)
            timesteps = sigmas * scheduler.config.num_train_timesteps
            s = sigmas.view(-1, 1, 1, 1)
            noisy = (1.0 - s) * latents + s * noise
            target = noise - latents
            with self.accelerator.autocast():
                pred = model(hidden_states=noisy.to(self.weight_dtype), timestep=timesteps,
                             encoder_hidden_states=cond["embeds"], pooled_projections=cond["pooled"],
                             return_dict=False)[0]
            per_example = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            return per_example, per_example.mean()
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=generator).to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        kwargs = {}
        if self.spec.text_encoding == "clip-pair":  # SDXL's UNet takes the pooled text and size ids
            kwargs["added_cond_kwargs"] = {"text_embeds": cond["pooled"],
                                           "time_ids": self._sdxl_time_ids([e[1] for e in encoded],
                                                                           [e[2] for e in encoded],
                                                                           [e[3] for e in encoded])}
        with self.accelerator.autocast():
            pred = model(noisy.to(self.weight_dtype), timesteps, cond["embeds"], return_dict=False, **kwargs)[0]
        per_example = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if config.min_snr_gamma > 0:
            alphas = scheduler.alphas_cumprod.to(self.device)[timesteps]
            snr = alphas / (1 - alphas)
            clipped = torch.clamp(snr, max=config.min_snr_gamma)
            weights = clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
            return per_example, (per_example * weights).mean()
        return per_example, per_example.mean()

    @torch.no_grad()
    def eval_loss(self) -> float | None:
        """Mean loss on the fixed evaluation set: the first examples, fixed noise and timesteps
        (None when ``eval_examples`` is 0: no evaluation)."""
        count = min(self.config.eval_examples, len(self.dataset.examples))
        if count == 0:
            return None
        examples = [(self.dataset.examples[i], False, None) for i in range(count)]
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        total = 0.0
        # with buckets the examples differ in shape: one at a time (each its own fixed generator)
        groups = [[example] for example in examples] if self.config.bucketing else [examples]
        for repeat in range(2):
            for index, group in enumerate(groups):
                per_example, _ = self.loss_of(group, _draw_generator(self.config, 99, repeat, index), model=model)
                total += float(per_example.mean()) / len(groups)
        model.train(was_training)
        return total / 2

    # --- checkpoints ---------------------------------------------------------------------

    def _lora_state(self) -> dict[str, dict[str, torch.Tensor]]:
        from peft.utils import get_peft_model_state_dict

        if self.config.mode == "full":
            model = self.accelerator.unwrap_model(self.model)
            return {"denoiser": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

        state = {"denoiser": {k: v.detach().cpu().clone()
                              for k, v in get_peft_model_state_dict(self.accelerator.unwrap_model(self.model)).items()}}
        for index, te in enumerate(self.lora_text_encoders):
            state[f"text_encoder_{index}"] = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(te).items()}
        return state

    def checkpoints(self) -> list[Path]:
        return sorted((self.run_path / "checkpoints").glob("step-*.pt"))

    def save_checkpoint(self, step: int) -> Path | None:
        path = self.run_path / "checkpoints" / f"step-{step:06d}.pt"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            payload = {"step": step, "lora": self._lora_state(), "optimizer": self.optimizer.state_dict(),
                       "ema": self.ema.state_dict() if self.ema is not None else None,
                       "lr_scheduler": self.lr_scheduler.state_dict(), "total_steps": self.total_steps,
                       "config": asdict(self.config)}
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            atomic_write_bytes(path, buffer.getvalue())
            for old in self.checkpoints()[: -max(1, self.config.keep_checkpoints)]:
                old.unlink(missing_ok=True)
            self.log("checkpoint", step=step, path=str(path))
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> int:
        from peft.utils import set_peft_model_state_dict

        payload = torch.load(path, map_location="cpu", weights_only=True)
        if self.config.mode == "full":
            self.accelerator.unwrap_model(self.model).load_state_dict(payload["lora"]["denoiser"])
            if self.ema is not None:
                if not payload.get("ema"):
                    raise ConfigError(f"{path} holds no EMA weights; resume with use_ema off or start afresh")
                self.ema.load_state_dict(payload["ema"])
                self.ema.to(self.device)
        else:
            set_peft_model_state_dict(self.accelerator.unwrap_model(self.model), payload["lora"]["denoiser"])
        for index, te in enumerate(self.lora_text_encoders):
            set_peft_model_state_dict(te, payload["lora"][f"text_encoder_{index}"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.lr_scheduler.load_state_dict(payload["lr_scheduler"])
        return int(payload["step"])

    # --- output --------------------------------------------------------------------------

    def export_state_dict(self) -> tuple[dict[str, torch.Tensor], str]:
        """The LoRA as (state dict, format): kohya keys for UNet families, peft keys for SD3."""
        from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

        config = self.config
        state = self._lora_state()
        prefix = self.spec.denoiser
        peft_state = {f"{prefix}.{k}": v for k, v in state["denoiser"].items()}
        te_prefixes = ["text_encoder", "text_encoder_2", "text_encoder_3"]
        for index, te in enumerate(self.lora_text_encoders):
            position = self.text_encoders.index(te)
            peft_state.update({f"{te_prefixes[position]}.{k}": v for k, v in state[f"text_encoder_{index}"].items()})
        peft_state = {k: v.to(torch.float16 if config.mixed_precision == "fp16" else torch.float32).contiguous()
                      for k, v in peft_state.items()}
        if self.spec.lora_format == "peft":
            scale = config.alpha / config.rank  # peft keys carry no alpha: fold it into B
            return {k: (v * scale if "lora_B" in k else v).contiguous() for k, v in peft_state.items()}, "peft"
        kohya = convert_state_dict_to_kohya(peft_state)
        for key in list(kohya):
            if key.endswith(".alpha"):
                kohya[key] = torch.tensor(float(config.alpha))
        return kohya, "kohya"

    def metadata(self, step: int, fmt: str) -> dict[str, str]:
        config = self.config
        meta = {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(config.rank),
            "ss_network_alpha": str(config.alpha),
            "ss_base_model_version": self.spec.kohya_base_version,
            "ss_sd_model_name": config.model,
            "ss_resolution": f"({config.resolution}, {config.resolution})",
            "ss_max_train_steps": str(self.total_steps),
            "ss_steps": str(step),
            "ss_learning_rate": str(config.learning_rate),
            "ss_num_train_images": str(self.examples_per_epoch),
            "ss_seed": str(config.seed),
            "ss_v2": str(self.spec.kohya_base_version == "sd_v2"),
            "easel_base_model": config.model,
            "easel_family": self.family,
            "easel_format": fmt,
            "easel_rank": str(config.rank),
            "easel_alpha": str(config.alpha),
            "easel_steps": str(step),
            "easel_learning_rate": str(config.learning_rate),
            "easel_resolution": str(config.resolution),
            "easel_dataset_size": str(len(self.dataset.examples)),
            "easel_dataset_hash": self.dataset.fingerprint(),
            "easel_seed": str(config.seed),
            "easel_target_modules": ",".join(config.target_modules),
            "easel_text_encoder": str(bool(self.lora_text_encoders)),
            "easel_quantized_base": self.config.quantize_base,
        }
        if self.prediction_type:
            meta["easel_prediction_type"] = self.prediction_type
        return meta

    @property
    def prediction_type(self) -> str | None:
        return "flow_matching" if self.spec.flow_matching else self.train_scheduler.config.prediction_type

    def save_full_model(self, step: int) -> Path:
        """Full fine-tune: the base pipeline with the trained (EMA, when on) UNet / transformer, as
        ``config.full_output_format`` asks: a diffusers folder ``Stable-diffusion/<name>/`` (written
        beside and swapped in atomically), one original-layout checkpoint
        ``Stable-diffusion/<name>.safetensors`` (with its configs in ``<name>.config/``), or both.
        Returns ``config.output_file``."""
        import shutil

        from webui.pipelines.export import export_checkpoint
        from webui.pipelines.text_encoder_keys import save_pipeline

        config = self.config
        target = Path(config.models_dir) / "Stable-diffusion" / config.output_name
        single_file = config.single_file_output
        write_folder = config.full_output_format in ("diffusers", "both")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}-saving"
        shutil.rmtree(staging, ignore_errors=True)
        meta = self.metadata(step, "diffusers" if write_folder else "single_file")
        meta.update({"easel_mode": "full", "easel_ema": str(self.ema is not None),
                     "easel_ema_decay": str(config.ema_decay)})
        for key in [k for k in meta if k.startswith("ss_network") or k in ("easel_rank", "easel_alpha",
                                                                           "easel_target_modules")]:
            meta.pop(key)
        model = self.accelerator.unwrap_model(self.model)
        params = list(model.parameters())
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            if write_folder:
                # the text encoders under the official checkpoints' key names (``text_model.*``)
                save_pipeline(self.pipe, staging)
            if single_file is not None:
                export_checkpoint(self.pipe, single_file, metadata={k: str(v) for k, v in meta.items()})
        finally:
            if self.ema is not None:
                self.ema.restore(params)
        if write_folder:
            (staging / "easel_training.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            old = target.parent / f".{target.name}-old"
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        return config.output_file

    def save_output(self, step: int) -> Path:
        from safetensors.torch import save

        if self.config.mode == "full":
            return self.save_full_model(step)
        state, fmt = self.export_state_dict()
        path = self.config.output_file
        atomic_write_bytes(path, save(state, metadata=self.metadata(step, fmt)))
        if self.config.save_diffusers_format:
            peft_state = {f"{self.spec.denoiser}.{k}": v.contiguous()
                          for k, v in self._lora_state()["denoiser"].items()}
            atomic_write_bytes(self.run_path / "pytorch_lora_weights.safetensors", save(peft_state))
        return path

    @torch.no_grad()
    def validation(self, step: int) -> list[str]:
        config = self.config
        if not config.validation_prompts or not self.accelerator.is_main_process:
            return []
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        folder = self.run_path / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, prompt in enumerate(config.validation_prompts):
            generator = torch.Generator("cpu").manual_seed(config.validation_seed + index)
            with self.accelerator.autocast():
                image = self.pipe(prompt, num_inference_steps=config.validation_steps, width=config.resolution,
                                  height=config.resolution, generator=generator).images[0]
            path = folder / f"step-{step:06d}-{index}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
            paths.append(str(path))
        model.train()
        self.log("validation", step=step, images=paths, prompts=list(config.validation_prompts))
        return paths

    # --- loop ----------------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        stop = (self.run_path / "STOP").exists() or self.should_stop()
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _hold_requested(self, step: int) -> bool:
        """Whether any process sees the test hold file asking to wait after ``step``."""
        path = os.environ.get(HOLD_FILE_ENV)
        asked = False
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8").strip()
                asked = step >= int(text or 0)
            except (OSError, ValueError):  # no file (or gone meanwhile): no hold
                asked = False
        flag = torch.tensor([1.0 if asked else 0.0], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _hold_if_asked(self, step: int) -> None:
        """Test hook (``EASEL_TRAIN_HOLD_FILE``): wait after ``step`` while the hold file asks for it,
        until it is deleted or a stop is requested. Every process decides from the same reduced
        flags, so they leave the wait together."""
        if not os.environ.get(HOLD_FILE_ENV):
            return
        while self._hold_requested(step) and not self._stop_requested():
            time.sleep(HOLD_POLL_SECONDS)

    def run(self) -> TrainResult:
        config = self.config
        self.setup()
        step = 0
        latest = self.checkpoints()
        if config.resume and latest:
            step = self.load_checkpoint(latest[-1])
            self.log("resumed", step=step, checkpoint=str(latest[-1]))
        result = TrainResult(status="running", step=step, total_steps=self.total_steps,
                             skipped=list(self.dataset.skipped))
        self.log("start", step=step, total_steps=self.total_steps, family=self.family, examples=len(self.dataset),
                 processes=self.accelerator.num_processes, output=str(config.output_file), mode=config.mode)
        result.eval_loss_start = self.eval_loss()
        if result.eval_loss_start is not None:
            self.log("eval", step=step, loss=result.eval_loss_start)
        self.model.train()
        for te in self.lora_text_encoders:
            te.train()
        accumulation = config.gradient_accumulation_steps
        started = time.monotonic()
        while step < self.total_steps:
            losses = []
            for micro in range(accumulation):
                draw = step * accumulation + micro
                generator = _draw_generator(config, 3, draw, self.accelerator.process_index)
                examples = self.batch_examples(draw)
                sync = micro == accumulation - 1
                with (contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)):
                    _, loss = self.loss_of(examples, generator)
                    if self.class_examples:
                        class_gen = _draw_generator(config, 4, draw, self.accelerator.process_index)
                        picks = torch.randint(0, len(self.class_examples), (config.batch_size,),
                                              generator=class_gen).tolist()
                        _, prior = self.loss_of([(self.class_examples[i], False, None) for i in picks], class_gen)
                        loss = loss + config.prior_loss_weight * prior
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; try a lower "
                                                 "learning rate or bf16 / no mixed precision")
                    with record_function("backward"):
                        self.accelerator.backward(loss / accumulation)
                losses.append(float(loss.detach()))
            with record_function("optimizer"):
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                if config.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(params, config.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.step(self.accelerator.unwrap_model(self.model).parameters())
            step += 1
            mean_loss = float(self.accelerator.reduce(torch.tensor([sum(losses) / len(losses)], device=self.device),
                                                      reduction="mean").item())
            result.losses.append(mean_loss)
            elapsed = time.monotonic() - started
            self.log("step", step=step, total_steps=self.total_steps,
                     epoch=step * config.batch_size * self.accelerator.num_processes * accumulation
                     / self.examples_per_epoch,
                     loss=mean_loss, lr=self.lr_scheduler.get_last_lr()[0], seconds=elapsed)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < self.total_steps:
                result.checkpoint = str(self.save_checkpoint(step))
            if config.validation_every and step % config.validation_every == 0 and step < self.total_steps:
                result.validation_images = self.validation(step)
            if step < self.total_steps:
                self._hold_if_asked(step)
            stop_after = config.stop_after_steps and step >= config.stop_after_steps and step < self.total_steps
            if step < self.total_steps and (stop_after or self._stop_requested()):
                result.checkpoint = str(self.save_checkpoint(step))
                result.status, result.step = "cancelled", step
                if self.accelerator.is_main_process:
                    (self.run_path / "STOP").unlink(missing_ok=True)  # honoured; a resume starts clean
                self.log("cancelled", step=step, checkpoint=result.checkpoint)
                return result
        result.step = step
        result.eval_loss_end = self.eval_loss()
        if result.eval_loss_end is not None:
            self.log("eval", step=step, loss=result.eval_loss_end)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            result.output = str(self.save_output(step))
            result.validation_images = self.validation(step) or result.validation_images
        self.accelerator.wait_for_everyone()
        result.status = "done"
        single_file = self.config.single_file_output
        self.log("done", step=step, output=str(self.config.output_file), eval_loss_start=result.eval_loss_start,
                 eval_loss_end=result.eval_loss_end, skipped=[name for name, _ in result.skipped],
                 **({"single_file": str(single_file)} if single_file is not None else {}))
        return result


def train(config: TrainConfig, callback: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Run one training job (see the module docstring). Raises ConfigError for impossible options."""
    trainer = LoraTrainer(config, callback, should_stop)
    try:
        return trainer.run()
    except Exception as exc:
        trainer.log("error", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        trainer.accelerator.end_training() if hasattr(trainer.accelerator, "end_training") else None
