"""Model family detection: SD 1.x, SD 2.x, SDXL (base and refiner) and SD 3/3.5.

For a diffusers folder the family comes from ``model_index.json``; for a single-file
checkpoint from the names and shapes of its tensors, read from the safetensors header
without loading any weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from webui.errors import EaselError

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sd3")

FAMILY_LABELS = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "sdxl-refiner": "SDXL refiner",
    "sd3": "SD 3/3.5",
}

#: The square side each family was trained at (what a new image defaults to).
FAMILY_NATIVE_SIZES = {"sd1": 512, "sd2": 768, "sdxl": 1024, "sdxl-refiner": 1024, "sd3": 1024}

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
