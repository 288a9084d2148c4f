"""The img2img tab: start from an image (img2img), or repaint part of it (Inpaint).

* **img2img**: upload an image (or send one from txt2img or the Background tab); the
  denoising strength says how far the result may move from it; the resize mode says how it
  is brought to the working size.
* **Inpaint**: paint over what should be repainted (or upload a mask: white = repaint), with
  A1111's mask blur, masked content (fill / original / latent noise / latent nothing),
  inpaint area (whole picture, or only masked with padding) and mask mode (inpaint masked or
  not masked). Everything outside the mask keeps the original's pixels.

Both queue an ``img2img`` / ``inpaint`` job on the device's queue; results are saved under
``outputs/img2img/`` and ``outputs/inpaint/`` with their infotext.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from webui.api import (
    MASKED_CONTENT,
    RESIZE_MODES,
    GenerationRequest,
    UIContext,
    generation_form,
    image_to_png,
    picked_image,
)

SCOPE = "img2img"
REMEMBERED = ("model", "prompt", "negative_prompt", "sampler", "schedule_type", "steps", "width", "height",
              "cfg_scale", "seed", "batch_count", "batch_size", "denoising_strength", "resize_mode", "mask_blur",
              "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding")
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


def working_size(image: Image.Image | None, max_side: int) -> tuple[int, int] | None:
    """An uploaded image's size as a working size: within ``max_side``, at least 64, multiples of 8."""
    if image is None:
        return None
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    width, height = width * scale, height * scale
    scale = max(1.0, 64 / min(width, height))
    return tuple(max(64, min(max_side, int(round(side * scale / 8)) * 8)) for side in (width, height))


def painted_mask(editor_value: Any) -> Image.Image | None:
    """The mask painted in the editor: every brush layer's alpha, combined (None when nothing is painted)."""
    if not isinstance(editor_value, dict):
        return None
    layers = [layer for layer in editor_value.get("layers") or [] if isinstance(layer, Image.Image)]
    alphas = [np.asarray(layer.convert("RGBA").getchannel("A")) for layer in layers]
    if not alphas:
        return None
    mask = np.maximum.reduce(alphas)
    return Image.fromarray(mask) if mask.any() else None


def render_img2img_tab(ui: UIContext) -> None:
    """Build the tab's components and wire its events."""
    context = ui.context
    form = generation_form
    last = ui.last_used(SCOPE)
    job_holder = gr.State({})
    mode = gr.State("img2img")

    picker = form.render_model_picker(ui, SCOPE, last)
    prompt, negative, generate, interrupt, skip = form.render_prompt_row(SCOPE, last)
    with gr.Row():
        with gr.Column():
            with gr.Tabs():
                with gr.Tab("img2img", id="img2img-mode-img2img") as img2img_mode:
                    image = gr.Image(label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                     elem_id="img2img-image", height=360)
                with gr.Tab("Inpaint", id="img2img-mode-inpaint", elem_id="img2img-mode-inpaint") as inpaint_mode:
                    editor = gr.ImageEditor(label="Image: paint over what to repaint", type="pil", image_mode="RGBA",
                                            sources=["upload", "clipboard"], elem_id="img2img-inpaint-editor",
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                                            eraser=gr.Eraser(), layers=False, height=420)
                    mask_upload = gr.Image(label="Or upload a mask (white = repaint); it wins over the painting",
                                           type="pil", image_mode=None, sources=["upload"],
                                           elem_id="img2img-inpaint-mask", height=160)
                    with gr.Row():
                        mask_blur = gr.Slider(0, 64, value=last.get("mask_blur", 4), step=1, label="Mask blur")
                        mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode")
                    masked_content = gr.Radio(list(MASKED_CONTENT), label="Masked content",
                                              value=MASKED_CONTENT[int(last.get("inpainting_fill", 1))])
                    with gr.Row():
                        inpaint_area = gr.Radio(list(INPAINT_AREAS), label="Inpaint area",
                                                value=INPAINT_AREAS[int(bool(last.get("inpaint_full_res")))])
                        padding = gr.Slider(0, 256, value=last.get("inpaint_full_res_padding", 32), step=4,
                                            label="Only masked padding, pixels")
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[int(last.get("resize_mode", 0))],
                                   label="Resize mode")
            width, height = form.render_size(ui, SCOPE, last, picker.default_side)
            strength = gr.Slider(0.01, 1.0, value=last.get("denoising_strength", 0.75), step=0.01,
                                 label="Denoising strength", elem_id="img2img-strength")
            sampling = form.render_sampling(ui, SCOPE, last, picker.model.value)
            batch_count, batch_size = form.render_batch(last)
            with gr.Column(elem_id="img2img-extension-controls"):
                extension_controls = ui.render_generation_controls("img2img")
        with gr.Column():
            outputs = form.render_outputs(SCOPE)
            form.render_send_buttons(ui, SCOPE, outputs.gallery)
    ui.share_fields(SCOPE, {"init_image": image, "inpaint_image": editor, "prompt": prompt, "negative_prompt": negative,
                            "model": picker.model, "sampler": sampling.sampler, "schedule_type": sampling.schedule,
                            "steps": sampling.steps, "cfg_scale": sampling.cfg, "seed": sampling.seed, "width": width,
                            "height": height, "denoising_strength": strength})

    img2img_mode.select(lambda: "img2img", outputs=mode, api_name=False, queue=False)
    inpaint_mode.select(lambda: "inpaint", outputs=mode, api_name=False, queue=False)

    def follow_upload(value: Any):
        size = working_size(picked_image(value), context.max_side)
        if size is None:
            return gr.skip(), gr.skip()
        return gr.update(value=size[0]), gr.update(value=size[1])

    image.upload(follow_upload, inputs=image, outputs=[width, height], api_name=False, queue=False)
    editor.upload(follow_upload, inputs=editor, outputs=[width, height], api_name=False, queue=False)

    def run(holder: dict, task: str, model: str, prompt: str, negative_prompt: str, init: Any, editor_value: Any,
            uploaded_mask: Any, blur: float, content: str, area: str, area_padding: float, mask_mode_value: str,
            resize: str, sampler: str, schedule_type: str, steps: float, width: float, height: float,
            cfg_scale: float, seed: float, denoising: float, batch_count: float, batch_size: float,
            extras: dict[str, Any] | None = None):
        """Generate from the image (img2img) or repaint the masked part (inpaint); ``extras`` holds the
        extension controls' values by key."""
        if task == "inpaint":
            source = picked_image(editor_value.get("background")) if isinstance(editor_value, dict) else None
            mask = picked_image(uploaded_mask) or painted_mask(editor_value)
            if source is None:
                raise gr.Error("Upload an image to inpaint (Inpaint tab)", print_exception=False)
            if mask is None:
                raise gr.Error("Paint over what should be repainted, or upload a mask", print_exception=False)
        else:
            source, mask = picked_image(init), None
            if source is None:
                raise gr.Error("Upload an image to start from (img2img tab)", print_exception=False)
        request = GenerationRequest(
            task=task, prompt=prompt or "", negative_prompt=negative_prompt or "", model=model or "",
            sampler=sampler, schedule_type=schedule_type, steps=int(steps), width=int(width), height=int(height),
            cfg_scale=float(cfg_scale), seed=int(seed if seed is not None else -1), batch_count=int(batch_count),
            batch_size=int(batch_size), denoising_strength=float(denoising),
            resize_mode=RESIZE_MODES.index(resize) if resize in RESIZE_MODES else 0,
            init_image=image_to_png(source), mask=image_to_png(mask) if mask is not None else None,
            mask_blur=int(blur), inpainting_fill=MASKED_CONTENT.index(content) if content in MASKED_CONTENT else 1,
            inpaint_full_res=area == INPAINT_AREAS[1], inpaint_full_res_padding=int(area_padding),
            inpainting_mask_invert=mask_mode_value == MASK_MODES[1],
            save=bool(context.setting("img2img.save_images", True)),
            extras=form.extras_value(extras),
        )
        ui.remember(SCOPE, {key: getattr(request, key) for key in REMEMBERED})
        yield from form.job_updates(ui, request, holder, bool(context.setting("txt2img.preview", True)))

    inputs = [job_holder, mode, picker.model, prompt, negative, image, editor, mask_upload, mask_blur, masked_content,
              inpaint_area, padding, mask_mode, resize_mode, sampling.sampler, sampling.schedule, sampling.steps,
              width, height, sampling.cfg, sampling.seed, strength, batch_count, batch_size]
    form.wire_generate(run, inputs, extension_controls, outputs.components(), [generate.click, prompt.submit],
                       api_name="img2img")
    form.wire_stop_buttons(ui, job_holder, interrupt, skip, outputs.progress, api_prefix="img2img_")
    sampling.reuse_seed.click(lambda value: value if value is not None else -1, inputs=outputs.used_seed,
                              outputs=sampling.seed, api_name=False, queue=False)
    form.wire_model_follow(ui, picker, sampling, width, height)
