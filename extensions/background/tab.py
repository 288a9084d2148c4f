"""The Background tab: upload, say what to keep, pick detections, correct the mask, replace the background.

Two ways to use it:

* one click: upload, type the subject and the new background, press **Replace background**
  (everything detected above the thresholds is kept);
* step by step: **Detect** shows every box with its label and score, tick the ones to keep,
  **Make mask** segments them and applies the mask tools, paint on the mask in the editor
  (white = keep, black = replace), then **Replace background** uses the edited mask.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from webui.api import EaselError, Job, UIContext, samplers_for, schedule_types_for

from . import engine, registry
from .detect import Detection
from .masks import apply_mask_tools, image_to_mask, mask_to_image, overlay, prepare_image

SCOPE = "background"
POLL_SECONDS = 0.25
DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam-vit-base"
REMEMBERED = ("detector", "segmenter", "model", "box_threshold", "text_threshold", "sampler", "steps", "cfg_scale",
              "strength", "erode", "feather", "decontaminate")
BOX_COLORS = ["#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#5ac8fa", "#ffcc00", "#ff2d55"]


def draw_detections(image: Image.Image, detections: list[Detection]) -> Image.Image:
    """The image with every box outlined and captioned ``#i label score``."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    for index, item in enumerate(detections):
        color = BOX_COLORS[index % len(BOX_COLORS)]
        draw.rectangle(item.box, outline=color, width=width)
        draw.text((item.box[0] + width + 1, item.box[1] + width), item.caption(index), fill=color)
    return canvas


def _detections_to_state(detections: list[Detection], prompt: str, size: tuple[int, int]) -> dict[str, Any]:
    return {"prompt": prompt or "", "size": list(size),
            "items": [{"box": list(d.box), "score": d.score, "label": d.label} for d in detections]}


def _detections_from_state(state: Any, prompt: str | None = None, size: tuple[int, int] | None = None
                           ) -> list[Detection]:
    """The detections of the last Detect, if they belong to this prompt and image size."""
    if not isinstance(state, dict):
        return []
    if prompt is not None and state.get("prompt") != (prompt or ""):
        return []
    if size is not None and list(state.get("size") or []) != list(size):
        return []
    return [Detection(tuple(item["box"]), float(item["score"]), str(item["label"])) for item in state["items"]]


def _kept(detections: list[Detection], checked: list[str] | None) -> list[Detection]:
    if checked is None:
        return detections
    labels = [d.caption(i) for i, d in enumerate(detections)]
    return [d for d, label in zip(detections, labels) if label in set(checked)]


def _editor_mask(editor: Any, size: tuple[int, int]) -> np.ndarray | None:
    """The mask painted in the editor (white = subject), at ``size``; None when there is none."""
    if not editor:
        return None
    composite = editor.get("composite") if isinstance(editor, dict) else None
    background = editor.get("background") if isinstance(editor, dict) else None
    if composite is None and background is None:
        return None
    picture = composite if composite is not None else background
    if not isinstance(picture, Image.Image):
        picture = Image.fromarray(np.asarray(picture))
    if picture.size != size:
        ratio = (picture.width / picture.height) / (size[0] / size[1])
        if not 0.97 < ratio < 1.03:
            return None  # a mask of another picture (the upload changed)
        picture = picture.convert("L").resize(size, Image.Resampling.NEAREST)
    mask = image_to_mask(picture)
    return mask if mask.any() else None


def render_background_tab(ui: UIContext) -> None:
    """Build the tab's components and wire its events."""
    context = ui.context
    last = ui.last_used(SCOPE)
    detectors = registry.detector_choices(context.models_dir)
    segmenters = registry.segmenter_choices(context.models_dir)
    detector_names = [c.name for c in detectors]
    segmenter_names = [c.name for c in segmenters]
    models = [(source.display_name, source.name) for source in context.list_models()]
    model_names = [name for _, name in models]
    model_default = last.get("model") if last.get("model") in model_names else context.default_model
    family = context.family_of(model_default) or "sd1"

    detections_state = gr.State({})
    job_holder = gr.State({})
    raw_mask_state = gr.State(None)

    gr.Markdown("Upload a photo, say what to keep and what the new background should be. "
                "Hub detectors and segmenters download on first use; the *tiny* ones have random weights "
                "and only exercise the workflow offline.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.Image(label="Photo", type="pil", image_mode=None, format="png", sources=["upload", "clipboard"],
                              elem_id="background-input", height=320)
            subject = gr.Textbox(label="Keep (subject prompt)", placeholder="the dog", elem_id="background-subject")
            background_prompt = gr.Textbox(label="New background (prompt)", lines=2, placeholder="a sunny beach",
                                           elem_id="background-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="background-negative")
            with gr.Row():
                replace = gr.Button("Replace background", variant="primary", elem_id="background-replace", scale=3)
                interrupt = gr.Button("Interrupt", elem_id="background-interrupt", scale=1)
            status = gr.Markdown("", elem_id="background-status")
        with gr.Column(scale=1):
            result_gallery = gr.Gallery(label="Result", columns=2, format="png", interactive=False,
                                        elem_id="background-gallery", height=320)
            info = gr.Textbox(label="Generation parameters", lines=3, interactive=False, elem_id="background-info")
            mask_file = gr.File(label="Mask (download)", interactive=False, elem_id="background-mask-file")
            with gr.Row():
                ui.send_image_button("img2img", "init_image", result_gallery, "Send to img2img",
                                     elem_id="background-send-img2img")
                ui.send_image_button("img2img", "inpaint_image", result_gallery, "Send to inpaint",
                                     elem_id="background-send-inpaint")
                ui.send_image_button("png_info", "file", result_gallery, "Send to PNG Info", as_file=True,
                                     elem_id="background-send-png-info")
    ui.share_fields("background", {"image": upload})
    with gr.Accordion("1 · Detect the subject", open=True):
        with gr.Row():
            detector = gr.Dropdown(choices=[(c.label, c.name) for c in detectors], label="Detector",
                                   value=last.get("detector") if last.get("detector") in detector_names
                                   else DEFAULT_DETECTOR, elem_id="background-detector", scale=3)
            box_threshold = gr.Slider(0.0, 1.0, value=last.get("box_threshold", 0.35), step=0.01,
                                      label="Box threshold", elem_id="background-box-threshold")
            text_threshold = gr.Slider(0.0, 1.0, value=last.get("text_threshold", 0.25), step=0.01,
                                       label="Text threshold", elem_id="background-text-threshold")
            detect_button = gr.Button("Detect", scale=0, min_width=100, elem_id="background-detect")
        with gr.Row():
            boxes_preview = gr.Image(label="Detections", interactive=False, format="png", height=300,
                                     elem_id="background-boxes")
            keep = gr.CheckboxGroup(label="Keep these detections", choices=[], elem_id="background-keep")
    with gr.Accordion("2 · Mask", open=True):
        with gr.Row():
            segmenter = gr.Dropdown(choices=[(c.label, c.name) for c in segmenters], label="Segmenter",
                                    value=last.get("segmenter") if last.get("segmenter") in segmenter_names
                                    else DEFAULT_SEGMENTER, elem_id="background-segmenter", scale=3)
            grow_pixels = gr.Slider(-64, 64, value=0, step=1, label="Grow (+) / shrink (-) pixels")
            make_mask = gr.Button("Make mask", scale=0, min_width=100, elem_id="background-make-mask")
        with gr.Row():
            largest = gr.Checkbox(value=True, label="Keep largest region")
            holes = gr.Checkbox(value=False, label="Fill holes")
            inverted = gr.Checkbox(value=False, label="Invert")
            use_alpha = gr.Checkbox(value=True, label="Use the upload's transparency as a hint")
            apply_tools = gr.Button("Apply mask tools", size="sm")
        with gr.Row():
            editor = gr.ImageEditor(label="Mask (white = keep, black = replace; paint to correct)", type="pil",
                                    format="png", image_mode="RGB", sources=(), layers=False, height=360,
                                    brush=gr.Brush(colors=["#ffffff", "#000000"], color_mode="fixed"),
                                    elem_id="background-mask-editor")
            mask_preview = gr.Image(label="Preview", interactive=False, format="png", height=360,
                                    elem_id="background-mask-preview")
    with gr.Accordion("3 · New background", open=True):
        with gr.Row():
            model = gr.Dropdown(choices=models, value=model_default, label="Model (inpainting pipeline of its family)",
                                elem_id="background-model", scale=3)
            ui.register_model_list(model)  # refreshed when the Models page adds a model
            sampler_choices = samplers_for(family)
            sampler = gr.Dropdown(choices=sampler_choices, label="Sampler", elem_id="background-sampler",
                                  value=last.get("sampler") if last.get("sampler") in sampler_choices
                                  else ("Euler a" if "Euler a" in sampler_choices else sampler_choices[0]))
            schedule = gr.Dropdown(choices=schedule_types_for(sampler.value, family), value="Automatic",
                                   label="Schedule type", allow_custom_value=True)
        with gr.Row():
            steps = gr.Slider(1, 150, value=last.get("steps", 25), step=1, label="Steps", elem_id="background-steps")
            cfg = gr.Slider(0, 30, value=last.get("cfg_scale", 7.0), step=0.5, label="CFG scale", elem_id="background-cfg")
            strength = gr.Slider(0.05, 1.0, value=last.get("strength", 1.0), step=0.01, label="Denoising strength")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="background-seed")
        with gr.Row():
            erode = gr.Slider(0, 32, value=last.get("erode", 2), step=1, label="Paste-back erode (px)")
            feather = gr.Slider(0, 32, value=last.get("feather", 4), step=1, label="Edge blend (px)")
            decontaminate = gr.Slider(0, 1, value=last.get("decontaminate", 0.5), step=0.05,
                                      label="Edge colour decontamination")
            work_side = gr.Slider(128, 2048, value=context.native_size_of(model_default) or 1024, step=64,
                                  label="Working size (long side, px; follows the model's native size)",
                                  elem_id="background-work-side")

    # ----- events ---------------------------------------------------------------------------

    def do_detect(image, prompt, detector_name, box_thr, text_thr, side):
        if image is None:
            raise gr.Error("Upload a photo first", print_exception=False)
        prepared = prepare_image(image)
        try:
            found = engine.detect_subject(context, prepared.image, prompt, detector_name, float(box_thr),
                                          float(text_thr), int(side))
        except (EaselError, ValueError, OSError, RuntimeError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        labels = [d.caption(i) for i, d in enumerate(found)]
        message = (f"{len(found)} detection(s); untick the ones you do not want." if found
                   else engine.no_detection_message(prompt, float(box_thr), float(text_thr)))
        return (_detections_to_state(found, prompt, prepared.size), draw_detections(prepared.image, found),
                gr.update(choices=labels, value=labels), message)

    detect_button.click(do_detect, inputs=[upload, subject, detector, box_threshold, text_threshold, work_side],
                        outputs=[detections_state, boxes_preview, keep, status], api_name="background_detect",
                        concurrency_id="generation")

    def editor_value(mask: np.ndarray):
        return {"background": mask_to_image(mask).convert("RGB"), "layers": [], "composite": None}

    def do_mask(image, state, checked, segmenter_name, grow, keep_largest, fill_holes, invert, alpha, side):
        if image is None:
            raise gr.Error("Upload a photo first", print_exception=False)
        prepared = prepare_image(image)
        chosen = _kept(_detections_from_state(state, size=prepared.size), checked)
        try:
            if chosen:
                raw = engine.segment_subject(context, prepared.image, [d.box for d in chosen], segmenter_name,
                                             int(side))
                if alpha and prepared.alpha_hint is not None:
                    raw &= prepared.alpha_hint
            elif alpha and prepared.alpha_hint is not None:
                raw = prepared.alpha_hint
            else:
                raise gr.Error("No detection is selected: press Detect first (or lower the thresholds), "
                               "or paint the mask in the editor", print_exception=False)
        except (EaselError, ValueError, OSError, RuntimeError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        mask = apply_mask_tools(raw, int(grow), keep_largest, fill_holes, invert)
        return raw, editor_value(mask), overlay(prepared.image, mask), f"Mask covers {mask.mean():.0%} of the image."

    mask_inputs = [upload, detections_state, keep, segmenter, grow_pixels, largest, holes, inverted, use_alpha,
                   work_side]
    make_mask.click(do_mask, inputs=mask_inputs, outputs=[raw_mask_state, editor, mask_preview, status],
                    api_name="background_mask", concurrency_id="generation")

    def do_tools(image, raw, grow, keep_largest, fill_holes, invert):
        if image is None or raw is None:
            raise gr.Error("Make a mask first", print_exception=False)
        prepared = prepare_image(image)
        mask = apply_mask_tools(np.asarray(raw, dtype=bool), int(grow), keep_largest, fill_holes, invert)
        return editor_value(mask), overlay(prepared.image, mask)

    apply_tools.click(do_tools, inputs=[upload, raw_mask_state, grow_pixels, largest, holes, inverted],
                      outputs=[editor, mask_preview], api_name=False)

    def preview_edit(image, edited):
        if image is None:
            return gr.skip()
        prepared = prepare_image(image)
        mask = _editor_mask(edited, prepared.size)
        return overlay(prepared.image, mask) if mask is not None else gr.skip()

    editor.change(preview_edit, inputs=[upload, editor], outputs=mask_preview, api_name=False, queue=False,
                  trigger_mode="always_last")

    def clear_for_new_upload(_image):
        return {}, None, gr.update(choices=[], value=[]), None, None, None

    upload.change(clear_for_new_upload, inputs=upload,
                  outputs=[detections_state, raw_mask_state, keep, editor, mask_preview, boxes_preview],
                  api_name=False, queue=False)
    # A new subject prompt means new detections and a new mask.
    subject.input(clear_for_new_upload, inputs=subject,
                  outputs=[detections_state, raw_mask_state, keep, editor, mask_preview, boxes_preview],
                  api_name=False, queue=False)

    def compute_replace(progress: Job, image, prompt, detector_name, box_thr, text_thr, state, checked, segmenter_name, grow,
                   keep_largest, fill_holes, invert, alpha, edited, bg_prompt, negative_prompt, model_name,
                   sampler_name, schedule_type, steps_value, cfg_value, strength_value, seed_value, erode_value,
                   feather_value, decontaminate_value, side):
        if image is None:
            raise gr.Error("Upload a photo first", print_exception=False)
        ui.remember(SCOPE, {"detector": detector_name, "segmenter": segmenter_name, "model": model_name,
                            "box_threshold": box_thr, "text_threshold": text_thr, "sampler": sampler_name,
                            "steps": steps_value, "cfg_scale": cfg_value, "strength": strength_value,
                            "erode": erode_value, "feather": feather_value, "decontaminate": decontaminate_value})
        options = engine.ReplaceOptions(
            background_prompt=bg_prompt or "", negative_prompt=negative_prompt or "", model=model_name or "",
            sampler=sampler_name, schedule_type=schedule_type or "Automatic", steps=int(steps_value),
            cfg_scale=float(cfg_value), strength=float(strength_value),
            seed=int(seed_value if seed_value is not None else -1), erode=int(erode_value),
            feather=int(feather_value), decontaminate=float(decontaminate_value), work_side=int(side),
            save=bool(context.setting("background.save_images", True)))
        try:
            prepared = prepare_image(image)
            mask = _editor_mask(edited, prepared.size)
            boxes_image = gr.skip()
            detections = _detections_from_state(state, prompt, prepared.size)
            if mask is not None:
                options.extra_infotext = {"Subject prompt": prompt or None, "Mask": "edited"}
                result = engine.replace_background(context, prepared.image, mask, options, progress)
                message = ""
                new_state, keep_update = gr.skip(), gr.skip()
            else:
                keep_indices = None
                if detections:  # the user pressed Detect: honour the ticks
                    labels = [d.caption(i) for i, d in enumerate(detections)]
                    keep_indices = [i for i, label in enumerate(labels) if label in set(checked or [])]
                job = engine.BackgroundJob(
                    image=image, subject_prompt=prompt or "", detector=detector_name, segmenter=segmenter_name,
                    box_threshold=float(box_thr), text_threshold=float(text_thr), keep=keep_indices,
                    grow=int(grow), keep_largest=bool(keep_largest), fill_holes=bool(fill_holes),
                    invert=bool(invert), use_alpha=bool(alpha), options=options)
                if detections:
                    outcome = _run_with_detections(context, job, detections, progress)
                else:
                    outcome = engine.run_background_job(context, job, progress)
                    labels = [d.caption(i) for i, d in enumerate(outcome.detections)]
                    boxes_image = draw_detections(outcome.prepared.image, outcome.detections)
                    new_state = _detections_to_state(outcome.detections, prompt, outcome.prepared.size)
                    keep_update = gr.update(choices=labels, value=labels)
                if detections:
                    new_state, keep_update = gr.skip(), gr.skip()
                if outcome.result is None:
                    return (gr.skip(), gr.skip(), gr.skip(), outcome.message, new_state, keep_update, boxes_image,
                            gr.skip(), gr.skip())
                result, message = outcome.result, outcome.message
                mask = result.mask
        except (EaselError, ValueError, OSError, RuntimeError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        status_text = f"Done in {result.seconds:.1f}s (seed {result.seed})." + (f" Note: {message}." if message else "")
        if progress.interrupted:
            status_text += " Interrupted: the background is not fully painted."
        items = [(result.path or result.image, "result"), (overlay(prepared.image, mask), "mask")]
        return (items, result.infotext, result.mask_path, status_text, new_state, keep_update, boxes_image,
                editor_value(mask), overlay(prepared.image, mask))

    def do_replace(holder: dict, *values: Any):
        """Run the replacement in a worker thread; yields progress, then the result."""
        progress = Job()
        progress.message = "Detecting and segmenting…"
        holder["job"] = progress
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["value"] = compute_replace(progress, *values)
            except gr.Error as exc:
                outcome["error"] = exc
            except Exception as exc:  # noqa: BLE001 - the server must keep serving
                outcome["error"] = gr.Error(f"{type(exc).__name__}: {exc}", print_exception=False)

        worker = threading.Thread(target=work, name="easel-background", daemon=True)
        worker.start()
        skip = gr.skip()
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            yield (skip, skip, skip, progress.progress_text(), skip, skip, skip, skip, skip)
        holder.pop("job", None)
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["value"]

    def stop(holder: dict) -> str:
        job = holder.get("job")
        if job is None:
            return "Nothing is running."
        job.interrupt()
        return "Interrupting…"

    interrupt.click(stop, inputs=job_holder, outputs=status, api_name="background_interrupt", queue=False,
                    concurrency_limit=None)

    replace_inputs = [job_holder, upload, subject, detector, box_threshold, text_threshold, detections_state, keep, segmenter,
                      grow_pixels, largest, holes, inverted, use_alpha, editor, background_prompt, negative, model,
                      sampler, schedule, steps, cfg, strength, seed, erode, feather, decontaminate, work_side]
    replace.click(do_replace, inputs=replace_inputs,
                  outputs=[result_gallery, info, mask_file, status, detections_state, keep, boxes_preview, editor,
                           mask_preview],
                  api_name="background_replace", concurrency_id="generation")

    def follow_model(name, current):
        """A new model: its family's samplers, and its native size as the working size."""
        fam = context.family_of(name) or "sd1"
        choices = samplers_for(fam)
        chosen = current if current in choices else choices[0]
        side = context.native_size_of(name) if name else None
        return (gr.update(choices=choices, value=chosen),
                gr.update(choices=schedule_types_for(chosen, fam), value="Automatic"),
                gr.update(value=side) if side else gr.skip())

    model.change(follow_model, inputs=[model, sampler], outputs=[sampler, schedule, work_side], api_name=False,
                 queue=False)

    def follow_sampler(name, sampler_name, current):
        fam = context.family_of(name) or "sd1"
        try:
            choices = schedule_types_for(sampler_name, fam)
        except ValueError:
            return gr.skip()
        return gr.update(choices=choices, value=current if current in choices else choices[0])

    sampler.change(follow_sampler, inputs=[model, sampler, schedule], outputs=schedule, api_name=False, queue=False)


def _run_with_detections(context, job: engine.BackgroundJob, detections: list[Detection],
                         progress: Job | None = None) -> engine.BackgroundOutcome:
    """Like :func:`engine.run_background_job`, with the detections the user already reviewed."""
    prepared = prepare_image(job.image)
    chosen = [detections[i] for i in (job.keep or []) if 0 <= i < len(detections)]
    if chosen:
        mask = engine.segment_subject(context, prepared.image, [d.box for d in chosen], job.segmenter,
                                      job.options.work_side)
        if job.use_alpha and prepared.alpha_hint is not None:
            mask &= prepared.alpha_hint
    elif job.use_alpha and prepared.alpha_hint is not None:
        mask = prepared.alpha_hint
    else:
        return engine.BackgroundOutcome(prepared, detections, None,
                                        "No detection is ticked: tick at least one, or paint the mask in the editor.")
    mask = apply_mask_tools(mask, job.grow, job.keep_largest, job.fill_holes, job.invert)
    job.options.extra_infotext = {**job.options.extra_infotext, "Subject prompt": job.subject_prompt or None,
                                  "Detector": job.detector, "Segmenter": job.segmenter if chosen else None}
    result = engine.replace_background(context, prepared.image, mask, job.options, progress)
    return engine.BackgroundOutcome(prepared, detections, result, "; ".join(prepared.notes))
