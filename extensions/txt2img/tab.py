"""The txt2img tab: prompt, parameters, Generate / Interrupt / Skip, gallery, live progress.

Generate queues a ``txt2img`` job on the device's queue and follows it: the progress line
says how many jobs are ahead while it waits, then the step and a preview.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.api import GenerationRequest, RefinerOptions, UIContext, generation_form

SCOPE = "txt2img"
REMEMBERED = ("model", "prompt", "negative_prompt", "sampler", "schedule_type", "steps", "width", "height",
              "cfg_scale", "seed", "batch_count", "batch_size")


def render_txt2img_tab(ui: UIContext) -> None:
    """Build the tab's components and wire its events."""
    context = ui.context
    form = generation_form
    last = ui.last_used(SCOPE)
    job_holder = gr.State({})

    picker = form.render_model_picker(ui, SCOPE, last)
    prompt, negative, generate, interrupt, skip = form.render_prompt_row(SCOPE, last)
    with gr.Row():
        with gr.Column():
            sampling = form.render_sampling(ui, SCOPE, last, picker.model.value)
            width, height = form.render_size(ui, SCOPE, last, picker.default_side)
            batch_count, batch_size = form.render_batch(last)
            with gr.Accordion("SDXL refiner", open=False):
                use_refiner = gr.Checkbox(value=False, label="Refine with a second SDXL model")
                refiner_model = ui.register_model_list(gr.Dropdown(choices=form.model_choices(ui), value=None,
                                                                   label="Refiner model"))
                switch_at = gr.Slider(0.05, 0.95, value=0.8, step=0.05, label="Switch at (fraction of steps)")
            with gr.Column(elem_id="txt2img-extension-controls"):
                extension_controls = ui.render_generation_controls("txt2img")
        with gr.Column():
            outputs = form.render_outputs(SCOPE)
            form.render_send_buttons(ui, SCOPE, outputs.gallery)

    def run(holder: dict, model: str, prompt: str, negative_prompt: str, sampler: str, schedule_type: str,
            steps: float, width: float, height: float, cfg_scale: float, seed: float, batch_count: float,
            batch_size: float, use_refiner: bool, refiner_model: str | None, refiner_switch_at: float,
            extras: dict[str, Any] | None = None):
        """Generate images; yields progress while the job waits and runs, then the gallery.

        ``extras`` holds the extension controls' values by key (``{"lora.names": [...]}``).
        """
        request = GenerationRequest(
            prompt=prompt or "", negative_prompt=negative_prompt or "", model=model or "", sampler=sampler,
            schedule_type=schedule_type, steps=int(steps), width=int(width), height=int(height),
            cfg_scale=float(cfg_scale), seed=int(seed if seed is not None else -1), batch_count=int(batch_count),
            batch_size=int(batch_size),
            refiner=RefinerOptions(model=refiner_model, switch_at=float(refiner_switch_at))
            if use_refiner and refiner_model else None,
            save=bool(context.setting("txt2img.save_images", True)),
            extras=form.extras_value(extras),
        )
        ui.remember(SCOPE, {key: getattr(request, key) for key in REMEMBERED})
        yield from form.job_updates(ui, request, holder, bool(context.setting("txt2img.preview", True)))

    ui.share_fields(SCOPE, {"prompt": prompt, "negative_prompt": negative, "model": picker.model,
                            "sampler": sampling.sampler, "schedule_type": sampling.schedule, "steps": sampling.steps,
                            "cfg_scale": sampling.cfg, "seed": sampling.seed, "width": width, "height": height})
    inputs = [job_holder, picker.model, prompt, negative, sampling.sampler, sampling.schedule, sampling.steps, width,
              height, sampling.cfg, sampling.seed, batch_count, batch_size, use_refiner, refiner_model,
              switch_at]
    # Easel's queue orders and limits the jobs (and tells each page its place in line), so
    # Gradio lets every page's request in at once to follow its own job. The extension controls
    # arrive in one ``extras`` dict: the endpoint's signature does not depend on the extensions.
    form.wire_generate(run, inputs, extension_controls, outputs.components(), [generate.click, prompt.submit],
                       api_name="txt2img")
    form.wire_stop_buttons(ui, job_holder, interrupt, skip, outputs.progress)
    sampling.reuse_seed.click(lambda value: value if value is not None else -1, inputs=outputs.used_seed,
                              outputs=sampling.seed, api_name=False, queue=False)
    form.wire_model_follow(ui, picker, sampling, width, height, other_model_lists=[refiner_model])
