"""Model family detection: SD 1.x, SD 2.x, SDXL (base and refiner) and SD 3/3.5.

For a diffusers folder the family comes from ``model_index.json``; for a single-file
checkpoint from the names and shapes of its tensors, read from the safetensors header
without loading any weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from webui.errors import EaselError

#: The built-in tiny models (random weights, built from configs by :mod:`webui.pipelines.tiny`)
#: and their families. Here, not in ``tiny``, so listing models imports no diffusers model code.
TINY_MODELS: dict[str, str] = {
    "tiny": "sd1",
    "tiny-sd2": "sd2",
    "tiny-sdxl": "sdxl",
    "tiny-sdxl-refiner": "sdxl-refiner",
    "tiny-sd3": "sd3",
}


class UnsupportedModelError(EaselError, ValueError):
    """A model that is not one of the supported families; the message says what it is."""


class UnsupportedTaskError(EaselError, ValueError):
    """A task the model's family cannot run (e.g. txt2img with an SDXL refiner)."""


@dataclass(frozen=True)
class Family:
    """What Easel knows about one model family; every family question is answered here.

    Code elsewhere asks this table (``family_spec(name).denoiser``, ``.pipelines["img2img"]``,
    ...) instead of comparing family names.
    """

    name: str
    label: str
    native_size: int
    """The square side the family was trained at (what a new image defaults to)."""
    latent_multiple: int
    """Image sides must be multiples of this (VAE factor 8, times the transformer's patch size)."""
    pipelines: dict[str, str | None]
    """diffusers pipeline class per task (``txt2img``, ``img2img``, ``inpaint``); None: cannot."""
    inpaint_checkpoint: str | None
    """The class a dedicated 9-channel inpainting single-file checkpoint loads with."""
    denoiser: str
    """The pipeline attribute holding the denoiser: ``unet`` or ``transformer``."""
    text_encoding: str
    """How prompts are encoded: ``clip`` (one CLIP), ``clip-pair`` (SDXL's two, pooled),
    ``clip-g`` (the refiner's second CLIP only, pooled), ``sd3`` (two CLIPs + T5)."""
    flow_matching: bool
    """Flow-matching model (SD3): flow samplers, no DDPM noise schedule."""
    default_sampler: str
    safety_checker: bool
    """The diffusers pipeline has a safety checker slot (Easel does not run it, like A1111)."""
    accepts_refiner: bool
    """An SDXL refiner may follow it (the base hands its latents over)."""
    can_refine: bool
    """It may act as the refiner of an ``accepts_refiner`` base."""
    trainable: bool
    """LoRA training and full fine-tuning support it."""
    lora_format: str
    """What the trainer writes: ``kohya`` keys, or ``peft`` keys (SD3)."""
    prefers_bf16: bool
    """bf16 on GPUs that support it (SD3's transformer overflows in fp16)."""
    default_attention_processor: bool
    """The denoiser has diffusers' ``set_default_attn_processor`` (UNets; SD3 keeps its own)."""
    kohya_base_version: str | None = None
    """``ss_base_model_version`` in a trained LoRA's metadata, as kohya's scripts write it."""

    def pipeline_class_name(self, task: str) -> str:
        """The diffusers class name for ``task``; raises :class:`UnsupportedTaskError` when the family cannot."""
        name = self.pipelines.get(task)
        if name is None:
            raise UnsupportedTaskError(f"{self.label} models cannot run {task}")
        return name

    @property
    def load_class_name(self) -> str:
        """The class a model of this family is loaded with: txt2img's, else img2img's (the refiner)."""
        return self.pipelines.get("txt2img") or self.pipeline_class_name("img2img")


_SD = dict(txt2img="StableDiffusionPipeline", img2img="StableDiffusionImg2ImgPipeline",
           inpaint="StableDiffusionInpaintPipeline")
_SDXL = dict(txt2img="StableDiffusionXLPipeline", img2img="StableDiffusionXLImg2ImgPipeline",
             inpaint="StableDiffusionXLInpaintPipeline")
_UNET = dict(denoiser="unet", flow_matching=False, default_sampler="Euler a", lora_format="kohya",
             prefers_bf16=False, default_attention_processor=True)

FAMILY_TABLE: dict[str, Family] = {family.name: family for family in (
    Family("sd1", "SD 1.x", 512, 8, _SD, "StableDiffusionInpaintPipeline", text_encoding="clip", safety_checker=True,
           accepts_refiner=False, can_refine=False, trainable=True, kohya_base_version="sd_v1", **_UNET),
    Family("sd2", "SD 2.x", 768, 8, _SD, "StableDiffusionInpaintPipeline", text_encoding="clip", safety_checker=True,
           accepts_refiner=False, can_refine=False, trainable=True, kohya_base_version="sd_v2", **_UNET),
    Family("sdxl", "SDXL", 1024, 8, _SDXL, "StableDiffusionXLInpaintPipeline", text_encoding="clip-pair",
           safety_checker=False, accepts_refiner=True, can_refine=True, trainable=True,
           kohya_base_version="sdxl_base_v1-0", **_UNET),
    Family("sdxl-refiner", "SDXL refiner", 1024, 8, {**_SDXL, "txt2img": None}, None, text_encoding="clip-g",
           safety_checker=False, accepts_refiner=False, can_refine=True, trainable=False, **_UNET),
    Family("sd3", "SD 3/3.5", 1024, 16,
           dict(txt2img="StableDiffusion3Pipeline", img2img="StableDiffusion3Img2ImgPipeline",
                inpaint="StableDiffusion3InpaintPipeline"), None,
           denoiser="transformer", text_encoding="sd3", flow_matching=True, default_sampler="Flow Euler",
           safety_checker=False, accepts_refiner=False, can_refine=False, trainable=True, lora_format="peft",
           prefers_bf16=True, default_attention_processor=False, kohya_base_version="sd3"),
)}

FAMILIES = tuple(FAMILY_TABLE)
FAMILY_LABELS = {name: family.label for name, family in FAMILY_TABLE.items()}
#: The square side each family was trained at (what a new image defaults to).
FAMILY_NATIVE_SIZES = {name: family.native_size for name, family in FAMILY_TABLE.items()}


def family_spec(name: str) -> Family:
    """The table entry of family ``name``; raises :class:`UnsupportedModelError` for an unknown one."""
    try:
        return FAMILY_TABLE[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}") from None


def pipeline_class(family: str, task: str = "txt2img"):
    """The diffusers pipeline class that runs ``task`` for ``family``."""
    import diffusers

    return getattr(diffusers, family_spec(family).pipeline_class_name(task))


def family_from_model_index(folder: Path) -> str:
    """Family of a diffusers folder, from its ``model_index.json`` (and UNet config for SD2)."""
    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    class_name = index.get("_class_name", "")
    # Dedicated inpainting models (runwayml/stable-diffusion-inpainting,
    # diffusers/stable-diffusion-xl-1.0-inpainting-0.1, ...) belong to their base family; they
    # load with the family's pipeline class and the background extension runs them through
    # the family's inpainting pipeline.
    class_name = {"StableDiffusionInpaintPipeline": "StableDiffusionPipeline",
                  "StableDiffusionXLInpaintPipeline": "StableDiffusionXLPipeline",
                  "StableDiffusion3InpaintPipeline": "StableDiffusion3Pipeline"}.get(class_name, class_name)
    if class_name == "StableDiffusion3Pipeline":
        return "sd3"
    if class_name == "StableDiffusionXLPipeline":
        return "sdxl"
    if class_name == "StableDiffusionXLImg2ImgPipeline":
        text_encoder = index.get("text_encoder") or [None, None]
        return "sdxl-refiner" if text_encoder[0] is None else "sdxl"
    if class_name == "StableDiffusionPipeline":
        unet_config = Path(folder) / "unet" / "config.json"
        if unet_config.is_file():
            config = json.loads(unet_config.read_text(encoding="utf-8"))
            if config.get("cross_attention_dim") == 1024 or config.get("use_linear_projection"):
                return "sd2"
        return "sd1"
    raise UnsupportedModelError(
        f"{folder} holds a {class_name or 'unknown'} model; Easel runs SD 1.x, SD 2.x, SDXL and SD 3/3.5 models"
    )


def checkpoint_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a ``.safetensors`` file, from its header only."""
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def family_from_tensor_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """Family of an original-layout (LDM / Stability) checkpoint from its tensor names."""
    keys = shapes.keys()

    def has_prefix(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    # A dedicated inpainting checkpoint (9-channel UNet: latents + mask + masked image) belongs
    # to its base family, as inpainting diffusers folders do; it loads with the family's
    # inpainting pipeline (see is_inpainting_checkpoint) and txt2img refuses it after loading.
    if has_prefix("model.diffusion_model.joint_blocks.") or has_prefix("joint_blocks."):
        return "sd3"
    if has_prefix("conditioner.embedders.1."):
        return "sdxl"
    if has_prefix("conditioner.embedders.0.model."):
        return "sdxl-refiner"
    if has_prefix("cond_stage_model.model."):
        return "sd2"
    if has_prefix("cond_stage_model.transformer.") or has_prefix("model.diffusion_model.input_blocks."):
        return "sd1"
    if has_prefix("control_model.") or has_prefix("lora_unet_") or has_prefix("lora_te"):
        raise UnsupportedModelError("this file is a ControlNet or LoRA, not a checkpoint; LoRAs go in models/Lora")
    raise UnsupportedModelError("this file does not look like a Stable Diffusion checkpoint")


INPAINT_CONV_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def is_inpainting_shapes(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether original-layout tensor shapes are those of a 9-channel inpainting UNet."""
    conv_in = shapes.get(INPAINT_CONV_IN_KEY)
    return conv_in is not None and len(conv_in) == 4 and conv_in[1] == 9


def is_inpainting_checkpoint(path: Path) -> bool:
    """Whether a single-file ``.safetensors`` checkpoint is a dedicated (9-channel) inpainting model."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        return is_inpainting_shapes(checkpoint_tensor_shapes(path))
    except Exception:  # noqa: BLE001 - unreadable: detect_file_family reports it
        return False


def detect_file_family(path: Path) -> str:
    """Family of a single-file checkpoint (``.safetensors``; pickle files are assumed SD1)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return "sd1"
    try:
        shapes = checkpoint_tensor_shapes(path)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise UnsupportedModelError(f"{path.name} is not a readable .safetensors file ({exc})") from exc
    return family_from_tensor_shapes(shapes)
