"""Tasks: what differs between txt2img, img2img and inpaint — and nothing else.

A task says which pipeline class of the family it runs (from the family table; built with
``from_pipe`` over the loaded model's components, so no second copy of the weights),
checks what only it needs (a model that can draw from a prompt, an image, a mask),
prepares its inputs at the working size, adds its arguments to the diffusers call,
finishes the images (inpainting pastes the untouched pixels back) and names its infotext
fields. Everything else — validation of the common fields, the model lock, hooks, seeds,
the step callback, out-of-memory handling, infotext, saving — is the core's, once, in
:mod:`webui.generation`.

Semantics follow AUTOMATIC1111: white in the mask is repainted; ``mask_blur`` softens the
mask's edge; "Only masked" crops the mask's box plus padding, grown to the working aspect
ratio, inpaints it at the working size and pastes it back; the pixels outside the (blurred)
mask are the original's in every case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from webui.jobs import MASKED_CONTENT, RESIZE_MODES, GenerationRequest, RequestError, png_to_image
from webui.pipelines.families import pipeline_class

if TYPE_CHECKING:
    from webui.pipelines.manager import LoadedModel

TASK_PIPELINES_KEY = "tasks.pipelines"


def is_inpainting_model(model: "LoadedModel") -> bool:
    """A dedicated inpainting model: its UNet takes 9 channels (latents + mask + masked image)."""
    config = getattr(getattr(model.pipeline, "unet", None), "config", None)
    return config is not None and getattr(config, "in_channels", 4) == 9


def task_pipeline(model: "LoadedModel", pipeline_task: str) -> Any:
    """The family's pipeline for ``pipeline_task`` over the loaded model's components (built once)."""
    cls = pipeline_class(model.family, pipeline_task)
    if type(model.pipeline) is cls:
        return model.pipeline
    cache = model.extension_state.setdefault(TASK_PIPELINES_KEY, {})
    pipe = cache.get(pipeline_task)
    if pipe is None:
        pipe = cls.from_pipe(model.pipeline)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        cache[pipeline_task] = pipe
    return pipe


@dataclass
class Prepared:
    """A task's inputs at the working size, and what it needs to finish the images."""

    arguments: dict[str, Any] = field(default_factory=dict)
    original: Image.Image | None = None
    """The input at the output size (img2img/inpaint), for the paste-back."""
    paste_mask: Image.Image | None = None
    """inpaint: L mask at the output size; white where the generated pixels are used."""
    crop_box: tuple[int, int, int, int] | None = None
    """inpaint "Only masked": the region of ``original`` that was inpainted."""
    infotext: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class: txt2img behaviour; subclasses override what differs."""

    name = "txt2img"
    output_folder = "txt2img"

    def pipeline_task(self, request: GenerationRequest, model: "LoadedModel") -> str:
        """Which task's pipeline class of the family runs this request."""
        return self.name

    def check_model(self, request: GenerationRequest, model: "LoadedModel") -> None:
        """Refuse, with a message, a model this task cannot use."""
        if model.spec.pipelines.get("txt2img") is None:
            raise RequestError(f"A {model.spec.label} model cannot draw from a prompt alone: choose an SDXL base "
                               "model and pick this one as its refiner")
        if is_inpainting_model(model):
            raise RequestError(f"{request.model} is an inpainting model: it cannot draw from a prompt alone "
                               "(use it in img2img's Inpaint or the Background tab)")
        if request.refiner is not None and not model.spec.accepts_refiner:
            raise RequestError("The SDXL refiner can only follow an SDXL base model")

    def prepare(self, request: GenerationRequest, model: "LoadedModel") -> Prepared:
        """Inputs at the working size: txt2img only passes the size."""
        return Prepared(arguments={"width": request.width, "height": request.height})

    def finish(self, prepared: Prepared, image: Image.Image) -> Image.Image:
        """The image as saved and returned."""
        return image


class ImageToImage(Task):
    """img2img: start from an image, resized to the working size by the resize mode."""

    name = "img2img"
    output_folder = "img2img"

    def pipeline_task(self, request: GenerationRequest, model: "LoadedModel") -> str:
        # A dedicated inpainting model runs img2img as inpainting with an all-white mask (as A1111).
        return "inpaint" if is_inpainting_model(model) else "img2img"

    def check_model(self, request: GenerationRequest, model: "LoadedModel") -> None:
        model.spec.pipeline_class_name(self.pipeline_task(request, model))  # raises when the family cannot

    def prepare(self, request: GenerationRequest, model: "LoadedModel") -> Prepared:
        image = resize_image(flatten(png_to_image(request.init_image)), request.width, request.height,
                             int(request.resize_mode))
        arguments: dict[str, Any] = {"image": image, "strength": float(request.denoising_strength)}
        if self.pipeline_task(request, model) == "inpaint":
            arguments.update(mask_image=Image.new("L", image.size, 255), width=image.width, height=image.height)
        return Prepared(arguments=arguments, original=image, infotext={
            "Denoising strength": float(request.denoising_strength),
            "Resize mode": RESIZE_MODES[int(request.resize_mode)] if request.resize_mode else None,
        })


class Inpaint(Task):
    """inpaint: repaint where the mask is white; everything else stays the original's pixels."""

    name = "inpaint"
    output_folder = "inpaint"

    def check_model(self, request: GenerationRequest, model: "LoadedModel") -> None:
        model.spec.pipeline_class_name("inpaint")

    def prepare(self, request: GenerationRequest, model: "LoadedModel") -> Prepared:
        original = resize_image(flatten(png_to_image(request.init_image)), request.width, request.height,
                                int(request.resize_mode))
        mask = resize_image(mask_from_image(png_to_image(request.mask)), request.width, request.height,
                            int(request.resize_mode))
        if request.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        mask = mask.point(lambda value: 255 if value >= 128 else 0)
        if not np.asarray(mask).any():
            raise RequestError("The mask is empty: paint (white) where the image should be repainted")
        blurred = mask.filter(ImageFilter.GaussianBlur(int(request.mask_blur))) if request.mask_blur else mask
        fill = MASKED_CONTENT[int(request.inpainting_fill)]
        crop_box = None
        work_image, work_mask = original, blurred
        if request.inpaint_full_res:
            crop_box = crop_region(mask, int(request.inpaint_full_res_padding), original.size)
            work_image = original.crop(crop_box).resize(original.size, Image.Resampling.LANCZOS)
            work_mask = blurred.crop(crop_box).resize(original.size, Image.Resampling.LANCZOS)
        work_image = fill_masked(work_image, work_mask, fill, seed=int(request.seed) & 0xFFFFFFFF)
        arguments = {"image": work_image, "mask_image": work_mask, "width": work_image.width,
                     "height": work_image.height, "strength": float(request.denoising_strength)}
        infotext = {
            "Denoising strength": float(request.denoising_strength),
            "Mask blur": int(request.mask_blur),
            "Masked content": fill,
            "Inpaint area": "Only masked" if request.inpaint_full_res else "Whole picture",
            "Masked area padding": int(request.inpaint_full_res_padding) if request.inpaint_full_res
            else None,
            "Mask mode": "Inpaint not masked" if request.inpainting_mask_invert else "Inpaint masked",
            "Resize mode": RESIZE_MODES[int(request.resize_mode)] if request.resize_mode else None,
        }
        return Prepared(arguments=arguments, original=original, paste_mask=blurred, crop_box=crop_box,
                        infotext=infotext)

    def finish(self, prepared: Prepared, image: Image.Image) -> Image.Image:
        original = prepared.original
        if prepared.crop_box is not None:
            x0, y0, x1, y1 = prepared.crop_box
            patch = image.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
            image = original.copy()
            image.paste(patch, (x0, y0))
        elif image.size != original.size:
            image = image.resize(original.size, Image.Resampling.LANCZOS)
        return Image.composite(image.convert("RGB"), original, prepared.paste_mask)


TASK_REGISTRY: dict[str, Task] = {task.name: task for task in (Task(), ImageToImage(), Inpaint())}


def get_task(name: str) -> Task:
    """The task called ``name``; a :class:`RequestError` names the known ones."""
    try:
        return TASK_REGISTRY[name]
    except KeyError:
        raise RequestError(f"unknown task {name!r}; one of {', '.join(TASK_REGISTRY)}") from None


# ------------------------------------------------------------------------------------------
# Image helpers (A1111's resize modes, masked-content fills, the "Only masked" crop)
# ------------------------------------------------------------------------------------------


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with EXIF rotation applied and transparency over white (palette, CMYK, 16-bit too)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB") if image.mode != "L" else image


def mask_from_image(image: Image.Image) -> Image.Image:
    """An L mask (white = repaint) from an uploaded or painted mask.

    A mask with transparency (a painted layer) is its alpha: what was painted is repainted.
    An opaque one is its brightness (white = repaint), as AUTOMATIC1111 reads uploaded masks.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = flatten(image)
    return ImageOps.grayscale(image.convert("RGB"))


def resize_image(image: Image.Image, width: int, height: int, mode: int = 0) -> Image.Image:
    """Bring ``image`` to ``width`` x ``height``: 0 stretch, 1 crop to fill, 2 fit and fill the bands."""
    if image.size == (width, height):
        return image
    resample = Image.Resampling.LANCZOS
    if mode == 0:
        return image.resize((width, height), resample)
    ratio = width / height
    source_ratio = image.width / image.height
    if mode == 1:  # scale to cover, centre crop
        scale = max(width / image.width, height / image.height)
        resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                               resample)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    # mode 2: scale to fit, then fill the empty bands by stretching the image's edge rows/columns
    scale = min(width / image.width, height / image.height)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - fitted.width) // 2, (height - fitted.height) // 2
    canvas.paste(fitted, (left, top))
    if ratio > source_ratio:  # bands left and right
        if left > 0:
            canvas.paste(fitted.crop((0, 0, 1, fitted.height)).resize((left, fitted.height)), (0, top))
        right = width - left - fitted.width
        if right > 0:
            canvas.paste(fitted.crop((fitted.width - 1, 0, fitted.width, fitted.height)).resize((right, fitted.height)),
                         (left + fitted.width, top))
    elif ratio < source_ratio:  # bands above and below
        if top > 0:
            canvas.paste(fitted.crop((0, 0, fitted.width, 1)).resize((fitted.width, top)), (left, 0))
        bottom = height - top - fitted.height
        if bottom > 0:
            canvas.paste(fitted.crop((0, fitted.height - 1, fitted.width, fitted.height)).resize((fitted.width, bottom)),
                         (left, top + fitted.height))
    return canvas


def fill_masked(image: Image.Image, mask: Image.Image, fill: str, seed: int = 0) -> Image.Image:
    """What the masked area starts from: the original, colours flowed in from around it, noise, or grey."""
    if fill == "original":
        return image
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = (np.asarray(mask, dtype=np.float32) / 255.0)[..., None]
    if fill == "fill":
        replacement = _flow_fill(pixels, weight[..., 0] < 0.5)
    elif fill == "latent noise":
        replacement = np.random.default_rng(seed).uniform(0, 255, pixels.shape).astype(np.float32)
    else:  # "latent nothing": the latent space's zero decodes to a flat grey
        replacement = np.full_like(pixels, 127.5)
    mixed = pixels * (1.0 - weight) + replacement * weight
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))


def _flow_fill(pixels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown pixels with blurred colours of the known ones, coarse to fine (A1111's "fill")."""
    import cv2

    result = pixels.copy()
    if not known.any():
        return np.full_like(pixels, pixels.mean())
    weights = known.astype(np.float32)
    for radius in (256, 64, 16, 4, 1):
        size = 2 * radius + 1
        blurred = cv2.blur(pixels * weights[..., None], (size, size))
        norm = cv2.blur(weights, (size, size))[..., None]
        estimate = np.where(norm > 1e-6, blurred / np.maximum(norm, 1e-6), result)
        result = np.where(known[..., None], pixels, estimate)
    return result


def crop_region(mask: Image.Image, padding: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The mask's bounding box plus ``padding``, grown to the image's aspect ratio, inside the image."""
    box = mask.getbbox()
    width, height = size
    if box is None:
        return (0, 0, width, height)
    x0, y0, x1, y1 = box
    x0, y0, x1, y1 = max(0, x0 - padding), max(0, y0 - padding), min(width, x1 + padding), min(height, y1 + padding)
    ratio = width / height
    box_w, box_h = x1 - x0, y1 - y0
    if box_w / box_h < ratio:
        box_w = min(width, round(box_h * ratio))
    else:
        box_h = min(height, round(box_w / ratio))
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(0, round(centre_x - box_w / 2)), width - box_w))
    top = int(min(max(0, round(centre_y - box_h / 2)), height - box_h))
    return (left, top, left + box_w, top + box_h)
