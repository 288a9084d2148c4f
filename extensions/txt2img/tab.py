"""The txt2img tab: prompt, parameters, Generate / Interrupt / Skip, gallery, live progress."""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from webui.api import (
    SCHEDULE_TYPES,
    EaselError,
    GenerationRequest,
    Job,
    RefinerOptions,
    UIContext,
    samplers_for,
    schedule_types_for,
)

SCOPE = "txt2img"
POLL_SECONDS = 0.25
REMEMBERED = ("model", "prompt", "negative_prompt", "sampler", "schedule_type", "steps", "width", "height",
              "cfg_scale", "seed", "batch_count", "batch_size")


def _model_choices(ui: UIContext) -> list[tuple[str, str]]:
    return [(source.display_name, source.name) for source in ui.context.list_models()]


def _model_note(ui: UIContext, name: str) -> str:
    """What the UI says about a model (the demo and built-in models explain what they draw)."""
    source = ui.context.model_source(name)
    return source.note if source is not None else ""


def _all_samplers() -> list[str]:
    names: list[str] = []
    for family in ("sd1", "sd3"):
        names += [name for name in samplers_for(family) if name not in names]
    return names


def render_txt2img_tab(ui: UIContext) -> None:
    """Build the tab's components and wire its events."""
    context = ui.context
    last = ui.last_used(SCOPE)
    model_names = [name for _, name in _model_choices(ui)]
    model_default = last.get("model") if last.get("model") in model_names else context.default_model
    default_side = context.native_size_of(model_default) or 512
    job_holder = gr.State({})
    model_side = gr.State(default_side)

    with gr.Row():
        model = gr.Dropdown(choices=_model_choices(ui), value=model_default, label="Model", scale=4,
                            allow_custom_value=False, elem_id="txt2img-model")
        refresh = gr.Button("Refresh", scale=0, min_width=80)
    model_note = gr.Markdown(_model_note(ui, model_default))
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value=last.get("prompt", ""), elem_id="txt2img-prompt",
                                placeholder="a photo of a cat, (sharp focus:1.2), [blurry]")
            negative = gr.Textbox(label="Negative prompt", lines=2, value=last.get("negative_prompt", ""))
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", size="sm")
                skip = gr.Button("Skip", size="sm")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                family = context.family_of(model_default)
                sampler_choices = samplers_for(family) if family else _all_samplers()
                sampler_value = last.get("sampler") if last.get("sampler") in sampler_choices else (
                    "Euler a" if "Euler a" in sampler_choices else sampler_choices[0])
                try:
                    schedule_choices = schedule_types_for(sampler_value, family or "sd1")
                except ValueError:
                    schedule_choices = SCHEDULE_TYPES
                schedule_value = last.get("schedule_type") if last.get("schedule_type") in schedule_choices \
                    else "Automatic"
                sampler = gr.Dropdown(choices=sampler_choices, value=sampler_value, label="Sampler",
                                      elem_id="txt2img-sampler", allow_custom_value=True)
                schedule = gr.Dropdown(choices=schedule_choices, value=schedule_value, label="Schedule type",
                                       allow_custom_value=True)
            steps = gr.Slider(1, 150, value=last.get("steps", 20), step=1, label="Steps", elem_id="txt2img-steps")
            with gr.Row():
                width = gr.Slider(64, context.max_side, value=last.get("width", default_side), step=8, label="Width",
                                  elem_id="txt2img-width")
                height = gr.Slider(64, context.max_side, value=last.get("height", default_side), step=8, label="Height",
                                   elem_id="txt2img-height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=last.get("batch_count", 1), step=1, label="Batch count")
                batch_size = gr.Slider(1, 8, value=last.get("batch_size", 1), step=1, label="Batch size")
            cfg = gr.Slider(0, 30, value=last.get("cfg_scale", 7.0), step=0.5, label="CFG scale")
            with gr.Row():
                seed = gr.Number(value=last.get("seed", -1), precision=0, label="Seed (-1 = random)", scale=3,
                                 elem_id="txt2img-seed")
                random_seed = gr.Button("Random", scale=0, min_width=70)
                reuse_seed = gr.Button("Reuse", scale=0, min_width=70)
            with gr.Accordion("SDXL refiner", open=False):
                use_refiner = gr.Checkbox(value=False, label="Refine with a second SDXL model")
                refiner_model = gr.Dropdown(choices=_model_choices(ui), value=None, label="Refiner model")
                switch_at = gr.Slider(0.05, 0.95, value=0.8, step=0.05, label="Switch at (fraction of steps)")
            with gr.Column(elem_id="txt2img-extension-controls"):
                extension_controls = ui.render_generation_controls("txt2img")
        with gr.Column():
            progress = gr.Markdown("", elem_classes=["easel-progress"], elem_id="txt2img-progress")
            preview = gr.Image(label="Preview", visible=True, interactive=False, height=200, format="png")
            gallery = gr.Gallery(label="Images", columns=2, format="png", elem_id="txt2img-gallery",
                                 interactive=False)
            info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="txt2img-info")
            used_seed = gr.Number(label="Seed used", precision=0, interactive=False)

    def run(holder: dict, model: str, prompt: str, negative_prompt: str, sampler: str, schedule_type: str,
            steps: float, width: float, height: float, cfg_scale: float, seed: float, batch_count: float,
            batch_size: float, use_refiner: bool, refiner_model: str | None, refiner_switch_at: float,
            *extension_values: Any):
        """Generate images; yields progress while the job runs, then the gallery."""
        request = GenerationRequest(
            prompt=prompt or "", negative_prompt=negative_prompt or "", model=model or "", sampler=sampler,
            schedule_type=schedule_type, steps=int(steps), width=int(width), height=int(height),
            cfg_scale=float(cfg_scale), seed=int(seed if seed is not None else -1), batch_count=int(batch_count),
            batch_size=int(batch_size),
            refiner=RefinerOptions(model=refiner_model, switch_at=float(refiner_switch_at))
            if use_refiner and refiner_model else None,
            save=bool(context.settings.get("txt2img.save_images", True)),
            extras={key: value for (key, _), value in zip(extension_controls, extension_values)},
        )
        ui.remember(SCOPE, {key: getattr(request, key) for key in REMEMBERED})
        job = Job()
        job.message = f"Loading {request.model}…" if request.model not in context.pipelines.loaded_names() else ""
        holder["job"] = job
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = context.generate(request, job)
            except EaselError as exc:
                outcome["error"] = str(exc)
            except ValueError as exc:  # RequestError and bad values
                outcome["error"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - the server must keep serving
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        worker = threading.Thread(target=work, name="easel-txt2img", daemon=True)
        worker.start()
        show_preview = bool(context.settings.get("txt2img.preview", True))
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            snapshot = job.snapshot()
            yield (gr.skip(), snapshot["preview"] if show_preview and snapshot["preview"] is not None else gr.skip(),
                   job.progress_text(), gr.skip(), gr.skip())
        holder.pop("job", None)
        if "error" in outcome:
            raise gr.Error(outcome["error"], print_exception=False)
        result = outcome["result"]
        items = [(record.path or record.image, f"seed {record.seed}") for record in result.images]
        status = f"{len(result.images)} image(s) in {result.seconds:.1f}s"
        if result.interrupted:
            status += " · interrupted"
        if result.skipped:
            status += f" · {result.skipped} skipped"
        first = result.images[0] if result.images else None
        yield (items, None, status, first.infotext if first else "", first.seed if first else None)

    def stop(holder: dict, which: str) -> str:
        job = holder.get("job")
        if job is None:
            return "Nothing is running."
        (job.interrupt if which == "interrupt" else job.skip)()
        return "Interrupting…" if which == "interrupt" else "Skipping the current image…"

    ui.share_fields(SCOPE, {"prompt": prompt, "negative_prompt": negative, "model": model, "sampler": sampler,
                            "schedule_type": schedule, "steps": steps, "cfg_scale": cfg, "seed": seed,
                            "width": width, "height": height})
    inputs = [job_holder, model, prompt, negative, sampler, schedule, steps, width, height, cfg, seed, batch_count,
              batch_size, use_refiner, refiner_model, switch_at] + [component for _, component in extension_controls]
    generate.click(run, inputs=inputs, outputs=[gallery, preview, progress, info, used_seed], api_name="txt2img",
                   concurrency_id="generation", concurrency_limit=4)
    prompt.submit(run, inputs=inputs, outputs=[gallery, preview, progress, info, used_seed], api_name=False,
                  concurrency_id="generation")
    interrupt.click(lambda holder: stop(holder, "interrupt"), inputs=job_holder, outputs=progress,
                    api_name="interrupt", concurrency_limit=None, queue=False)
    skip.click(lambda holder: stop(holder, "skip"), inputs=job_holder, outputs=progress, api_name="skip",
               concurrency_limit=None, queue=False)
    random_seed.click(lambda: -1, outputs=seed, api_name=False, queue=False)
    reuse_seed.click(lambda value: value if value is not None else -1, inputs=used_seed, outputs=seed,
                     api_name=False, queue=False)

    def refresh_models(current: str):
        choices = _model_choices(ui)
        return gr.update(choices=choices, value=current), gr.update(choices=choices)

    refresh.click(refresh_models, inputs=model, outputs=[model, refiner_model], api_name=False, queue=False)

    def follow_model(name: str, current_sampler: str):
        """A new model (picked here or sent from another tab): its note and its family's samplers."""
        family = context.family_of(name) if name else None
        choices = samplers_for(family) if family else _all_samplers()
        chosen = current_sampler if current_sampler in choices else (
            "Euler a" if "Euler a" in choices else choices[0])
        return _model_note(ui, name), gr.update(choices=choices, value=chosen)

    def follow_model_size(name: str, previous_side: int | None, current_width: float, current_height: float):
        """A model picked here: its native size where the size was the old model's (values sent from
        another tab, e.g. PNG Info, keep their own size)."""
        side = context.native_size_of(name) if name else None
        untouched = previous_side is not None and int(current_width) == int(current_height) == int(previous_side)
        size_update = gr.update(value=side) if side and untouched else gr.skip()
        return side or previous_side, size_update, size_update

    def follow_sampler(name: str, sampler_name: str, current_schedule: str):
        family = context.family_of(name) or "sd1"
        try:
            choices = schedule_types_for(sampler_name, family)
        except ValueError:
            choices = SCHEDULE_TYPES
        return gr.update(choices=choices, value=current_schedule if current_schedule in choices else choices[0])

    model.change(follow_model, inputs=[model, sampler], outputs=[model_note, sampler], api_name=False, queue=False)
    model.input(follow_model_size, inputs=[model, model_side, width, height], outputs=[model_side, width, height],
                api_name=False, queue=False)
    sampler.change(follow_sampler, inputs=[model, sampler, schedule], outputs=schedule, api_name=False, queue=False)
