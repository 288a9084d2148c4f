"""The training configuration: one JSON file, written by the Train tab and read by the trainer.

``python -m webui.train --config FILE`` and ``accelerate launch -m webui.train --config FILE``
read the same file the UI writes (:func:`save_config`). Unknown keys are an error (a typo
must not silently train with a default), missing keys take the defaults below.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

MIXED_PRECISION = ("no", "fp16", "bf16")
MODES = ("lora", "full")
# what a full fine-tune writes: a diffusers folder, one original-layout .safetensors checkpoint
# (the layout AUTOMATIC1111, Forge and ComfyUI load; with a small config folder beside it), or both
FULL_OUTPUT_FORMATS = ("diffusers", "safetensors", "both")
QUANTIZE_BASE = ("none", "nf4")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class ConfigError(ValueError):
    """A training option that cannot work, with a message for the user."""


@dataclass
class TrainConfig:
    """Every option of one LoRA training run (see the module docstring)."""

    # what to train on
    model: str = "tiny"                 # a model name Easel lists, a local folder/file, or a hub id
    models_dir: str = "models"          # resolves model names; the LoRA goes to <models_dir>/Lora/
    dataset_dir: str = ""
    output_name: str = "my_lora"
    mode: str = "lora"                  # "lora": LoRA adapters; "full": fine-tune the whole UNet / SD3 transformer
    use_ema: bool = False               # full mode: keep an EMA of the weights and save it as the model
    ema_decay: float = 0.9999
    full_output_format: str = "diffusers"  # full mode: "diffusers" folder, "safetensors" single file, or "both"
    run_dir: str = ""                   # checkpoints, logs, progress; default <models_dir>/../training/<name>
    caption_extension: str = ".txt"
    instance_prompt: str = ""           # DreamBooth: used for images without a caption (or for all)
    use_captions: bool = True
    # prior preservation (DreamBooth)
    prior_preservation: bool = False
    class_prompt: str = ""
    num_class_images: int = 50
    prior_loss_weight: float = 1.0
    class_steps: int = 20
    # images
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    bucketing: bool = False             # aspect-ratio buckets of about resolution**2 pixels instead of squares
    # LoRA
    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    train_text_encoder: bool = False
    quantize_base: str = "none"         # "nf4": QLoRA, LoRA on a bitsandbytes NF4-quantized UNet/transformer (CUDA)
    text_encoder_lr: float | None = None
    # optimisation
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_steps: int = 500                # 0: use epochs
    epochs: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    use_8bit_adam: bool = False
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    min_snr_gamma: float = 0.0          # 0: off
    noise_offset: float = 0.0
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    seed: int = 42
    # checkpoints, validation
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    resume: bool = True                 # resume from the latest checkpoint of run_dir when there is one
    stop_after_steps: int = 0           # stop (as Cancel does) after this many steps; for tests and trials
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0           # 0: only at the end (when prompts are given)
    validation_steps: int = 20
    validation_seed: int = 1234
    eval_examples: int = 4              # the fixed evaluation set: first N examples, fixed noise and timesteps; 0: off
    save_diffusers_format: bool = False
    device: str = "auto"                # auto: CUDA when there is one; cpu: the CPU even with a GPU

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option that cannot work (wrong type, out of
        range, or a combination the trainer refuses)."""
        self._check_types()
        if not self.dataset_dir:
            raise ConfigError("dataset_dir: no dataset folder given")
        if not self.output_name or any(ch in self.output_name for ch in "/\\:") or self.output_name.startswith("."):
            raise ConfigError(f"output_name {self.output_name!r} must be a plain file name")
        for name, allowed in (("mode", MODES), ("quantize_base", QUANTIZE_BASE), ("mixed_precision", MIXED_PRECISION),
                              ("lr_scheduler", LR_SCHEDULERS), ("device", DEVICES),
                              ("full_output_format", FULL_OUTPUT_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.mode == "full" and self.train_text_encoder:
            raise ConfigError("full fine-tuning trains the UNet / transformer only; turn text-encoder training off "
                              "(train_text_encoder)")
        if self.quantize_base != "none" and self.mode != "lora":
            raise ConfigError("a quantized (NF4) base trains LoRA adapters only (QLoRA); use mode 'lora'")
        if self.full_output_format != "diffusers" and self.mode != "full":
            raise ConfigError("full_output_format is for full fine-tuning (mode 'full'); a LoRA is one file already")
        if self.use_ema and self.mode != "full":
            raise ConfigError("EMA (use_ema) is for full fine-tuning (mode 'full')")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be between 0 and 1 (got {self.ema_decay})")
        if self.resolution < 64 or self.resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8, at least 64 (got {self.resolution})")
        for name in ("rank", "batch_size", "gradient_accumulation_steps", "keep_checkpoints", "validation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "epochs", "lr_warmup_steps", "checkpoint_every", "stop_after_steps",
                     "validation_every", "eval_examples", "num_class_images", "class_steps", "adam_weight_decay",
                     "max_grad_norm", "min_snr_gamma", "noise_offset", "prior_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (got {getattr(self, name)})")
        for name in ("learning_rate", "alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be greater than 0 (got {getattr(self, name)})")
        if self.text_encoder_lr is not None and not self.text_encoder_lr > 0:
            raise ConfigError(f"text_encoder_lr must be greater than 0, or null for the learning_rate "
                              f"(got {self.text_encoder_lr})")
        if self.max_steps == 0 and self.epochs == 0:
            raise ConfigError("give max_steps or epochs (both are 0)")
        if self.mode == "lora" and not self.target_modules:
            raise ConfigError("target_modules is empty: name the layers the LoRA adapts (e.g. to_q, to_k, to_v)")
        if self.prior_preservation and not self.class_prompt:
            raise ConfigError("prior preservation needs a class prompt (class_prompt, e.g. 'a photo of a dog')")
        if self.prior_preservation and (self.num_class_images < 1 or self.class_steps < 1):
            raise ConfigError("prior preservation needs num_class_images and class_steps of at least 1")
        if not self.use_captions and not self.instance_prompt:
            raise ConfigError("without captions (use_captions off) an instance_prompt is needed")

    def _check_types(self) -> None:
        """Each option has the JSON type of its default: ``"rank": "16"`` or ``"max_steps": 1.5`` is an
        error naming the option (not a TypeError deep in the trainer)."""
        hints = get_type_hints(TrainConfig)
        for option in fields(self):
            value, expected = getattr(self, option.name), hints[option.name]
            if not _has_type(value, expected):
                wanted = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
                          list[str]: "a list of strings", float | None: "a number or null"}.get(expected, str(expected))
                raise ConfigError(f"{option.name} must be {wanted} (got {value!r})")

    @property
    def lora_dir(self) -> Path:
        return Path(self.models_dir) / "Lora"

    @property
    def output_file(self) -> Path:
        """Where the result goes: ``Lora/<name>.safetensors`` (LoRA) or, for a full fine-tune, the
        diffusers folder ``Stable-diffusion/<name>/`` (formats ``diffusers`` and ``both``) or the
        single file ``Stable-diffusion/<name>.safetensors`` (format ``safetensors``); the txt2img
        model list shows them."""
        if self.mode == "full":
            if self.full_output_format == "safetensors":
                return self.single_file_output
            return Path(self.models_dir) / "Stable-diffusion" / self.output_name
        return self.lora_dir / f"{self.output_name}.safetensors"

    @property
    def single_file_output(self) -> Path | None:
        """The original-layout checkpoint a full fine-tune writes (formats ``safetensors`` and
        ``both``): ``Stable-diffusion/<name>.safetensors``; None when it writes none."""
        if self.mode != "full" or self.full_output_format == "diffusers":
            return None
        return Path(self.models_dir) / "Stable-diffusion" / f"{self.output_name}.safetensors"

    @property
    def run_path(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return Path(self.models_dir).resolve().parent / "training" / self.output_name


def _has_type(value: Any, expected: Any) -> bool:
    """Whether ``value`` (as JSON gives it) fits the annotation ``expected`` of a TrainConfig field."""
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if expected == list[str]:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if expected == float | None:
        return value is None or _has_type(value, float)
    return True


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown training option(s): {', '.join(unknown)}")
    return TrainConfig(**data)


def load_config(path: str | os.PathLike) -> TrainConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read training config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    return config_from_dict(data)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write_bytes(path, json.dumps(asdict(config), indent=2).encode("utf-8"))
    return path
