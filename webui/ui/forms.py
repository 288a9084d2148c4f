"""Pieces of a generation tab that txt2img and img2img share (public as ``webui.api.generation_form``).

Each ``render_*`` function creates its Gradio components inside the caller's layout and
returns them; :func:`wire_model_follow` keeps the sampler list and the size in step with
the chosen model; :func:`job_updates` queues a request and turns the job's progress into
the outputs of :func:`render_outputs`. Element ids are ``<tab_id>-<part>`` (``txt2img-model``,
``img2img-gallery``, ...), which the browser tests rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from webui.errors import EaselError
from webui.jobs import GenerationRequest, Job
from webui.pipelines.families import FAMILIES
from webui.pipelines.schedulers import SCHEDULE_TYPES, samplers_for, schedule_types_for
from webui.queue import follow_job

if TYPE_CHECKING:
    from webui.api import UIContext

POLL_SECONDS = 0.25


def model_choices(ui: "UIContext") -> list[tuple[str, str]]:
    """``(label, name)`` of every model a user can pick."""
    return [(source.display_name, source.name) for source in ui.context.list_models()]


def model_note(ui: "UIContext", name: str) -> str:
    """What the UI says about a model (the demo and built-in models explain what they draw)."""
    source = ui.context.model_source(name)
    return source.note if source is not None else ""


def all_samplers() -> list[str]:
    """Every sampler of every family, in display order (before the model's family is known)."""
    names: list[str] = []
    for family in FAMILIES:
        names += [name for name in samplers_for(family) if name not in names]
    return names


@dataclass
class ModelPicker:
    model: Any
    refresh: Any
    note: Any
    side: Any
    """gr.State: the native side of the chosen model (the size follows it while untouched)."""
    default_side: int


def render_model_picker(ui: "UIContext", tab_id: str, last: dict[str, Any]) -> ModelPicker:
    """The model dropdown with its Refresh button and note."""
    import gradio as gr

    context = ui.context
    names = [name for _, name in model_choices(ui)]
    chosen = last.get("model") if last.get("model") in names else context.default_model
    default_side = context.native_size_of(chosen) or 512
    with gr.Row():
        model = gr.Dropdown(choices=model_choices(ui), value=chosen, label="Model", scale=4,
                            allow_custom_value=False, elem_id=f"{tab_id}-model")
        ui.register_model_list(model)  # refreshed when the Models page adds a model
        refresh = gr.Button("Refresh", scale=0, min_width=80)
    note = gr.Markdown(model_note(ui, chosen))
    return ModelPicker(model, refresh, note, gr.State(default_side), default_side)


def render_prompt_row(tab_id: str, last: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    """Prompt and negative prompt beside Generate / Interrupt / Skip."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value=last.get("prompt", ""), elem_id=f"{tab_id}-prompt",
                                placeholder="a photo of a cat, (sharp focus:1.2), [blurry]")
            negative = gr.Textbox(label="Negative prompt", lines=2, value=last.get("negative_prompt", ""))
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab_id}-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", size="sm")
                skip = gr.Button("Skip", size="sm")
    return prompt, negative, generate, interrupt, skip


@dataclass
class Sampling:
    sampler: Any
    schedule: Any
    steps: Any
    cfg: Any
    seed: Any
    random_seed: Any
    reuse_seed: Any


def render_sampling(ui: "UIContext", tab_id: str, last: dict[str, Any], model_name: str) -> Sampling:
    """Sampler, schedule type, steps, CFG scale and seed (with Random / Reuse)."""
    import gradio as gr

    family = ui.context.family_of(model_name)
    sampler_choices = samplers_for(family) if family else all_samplers()
    sampler_value = last.get("sampler") if last.get("sampler") in sampler_choices else (
        "Euler a" if "Euler a" in sampler_choices else sampler_choices[0])
    try:
        schedule_choices = schedule_types_for(sampler_value, family or "sd1")
    except ValueError:
        schedule_choices = SCHEDULE_TYPES
    schedule_value = last.get("schedule_type") if last.get("schedule_type") in schedule_choices else "Automatic"
    with gr.Row():
        sampler = gr.Dropdown(choices=sampler_choices, value=sampler_value, label="Sampler",
                              elem_id=f"{tab_id}-sampler", allow_custom_value=True)
        schedule = gr.Dropdown(choices=schedule_choices, value=schedule_value, label="Schedule type",
                               allow_custom_value=True)
    steps = gr.Slider(1, 150, value=last.get("steps", 20), step=1, label="Steps", elem_id=f"{tab_id}-steps")
    cfg = gr.Slider(0, 30, value=last.get("cfg_scale", 7.0), step=0.5, label="CFG scale")
    with gr.Row():
        seed = gr.Number(value=last.get("seed", -1), precision=0, label="Seed (-1 = random)", scale=3,
                         elem_id=f"{tab_id}-seed")
        random_seed = gr.Button("Random", scale=0, min_width=70)
        reuse_seed = gr.Button("Reuse", scale=0, min_width=70)
    return Sampling(sampler, schedule, steps, cfg, seed, random_seed, reuse_seed)


def render_size(ui: "UIContext", tab_id: str, last: dict[str, Any], default_side: int) -> tuple[Any, Any]:
    """Width and height sliders (multiples of 8 up to the server's largest side)."""
    import gradio as gr

    largest = max(128, ui.context.max_side)

    def side(value: Any) -> int:  # a saved or default side the server no longer allows is brought inside
        return min(max(int(value or default_side), 64), largest)

    with gr.Row():
        width = gr.Slider(64, largest, value=side(last.get("width", default_side)), step=8, label="Width",
                          elem_id=f"{tab_id}-width")
        height = gr.Slider(64, largest, value=side(last.get("height", default_side)), step=8, label="Height",
                           elem_id=f"{tab_id}-height")
    return width, height


def render_batch(last: dict[str, Any]) -> tuple[Any, Any]:
    """Batch count and batch size."""
    import gradio as gr

    with gr.Row():
        batch_count = gr.Slider(1, 100, value=last.get("batch_count", 1), step=1, label="Batch count")
        batch_size = gr.Slider(1, 8, value=last.get("batch_size", 1), step=1, label="Batch size")
    return batch_count, batch_size


@dataclass
class Outputs:
    progress: Any
    preview: Any
    gallery: Any
    info: Any
    used_seed: Any

    def components(self) -> list[Any]:
        """In the order :func:`job_updates` yields them."""
        return [self.gallery, self.preview, self.progress, self.info, self.used_seed]


def render_outputs(tab_id: str) -> Outputs:
    """Progress line, live preview, gallery, the infotext of the first image and the seed used."""
    import gradio as gr

    progress = gr.Markdown("", elem_classes=["easel-progress"], elem_id=f"{tab_id}-progress")
    preview = gr.Image(label="Preview", visible=True, interactive=False, height=200, format="png")
    gallery = gr.Gallery(label="Images", columns=2, format="png", elem_id=f"{tab_id}-gallery", interactive=False)
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{tab_id}-info")
    used_seed = gr.Number(label="Seed used", precision=0, interactive=False)
    return Outputs(progress, preview, gallery, info, used_seed)


def render_send_buttons(ui: "UIContext", tab_id: str, gallery: Any) -> None:
    """"Send to img2img / inpaint / Background / PNG Info" under a gallery (the selected image, else the first)."""
    import gradio as gr

    with gr.Row():
        ui.send_image_button("img2img", "init_image", gallery, "Send to img2img", elem_id=f"{tab_id}-send-img2img")
        ui.send_image_button("img2img", "inpaint_image", gallery, "Send to inpaint", elem_id=f"{tab_id}-send-inpaint")
        ui.send_image_button("background", "image", gallery, "Send to Background",
                             elem_id=f"{tab_id}-send-background")
        ui.send_image_button("png_info", "file", gallery, "Send to PNG Info", as_file=True,
                             elem_id=f"{tab_id}-send-png-info")


def wire_model_follow(ui: "UIContext", picker: ModelPicker, sampling: Sampling, width: Any, height: Any,
                      other_model_lists: list[Any] = ()) -> None:
    """A new model brings its note, its family's samplers, and its native size where the size was the old one's."""
    import gradio as gr

    context = ui.context

    def follow_model(name: str, current_sampler: str):
        """A new model (picked here or sent from another tab): its note and its family's samplers."""
        family = context.family_of(name) if name else None
        choices = samplers_for(family) if family else all_samplers()
        chosen = current_sampler if current_sampler in choices else (
            "Euler a" if "Euler a" in choices else choices[0])
        return model_note(ui, name), gr.update(choices=choices, value=chosen)

    def follow_model_size(name: str, previous_side: int | None, current_width: float, current_height: float):
        """A model picked here: its native size where the size was the old model's (values sent from
        another tab, e.g. PNG Info, keep their own size)."""
        side = context.native_size_of(name) if name else None
        untouched = previous_side is not None and int(current_width) == int(current_height) == int(previous_side)

        def size_update():  # one update object per output: Gradio consumes an update as it applies it
            return gr.update(value=side) if side and untouched else gr.skip()

        return side or previous_side, size_update(), size_update()

    def follow_sampler(name: str, sampler_name: str, current_schedule: str):
        family = context.family_of(name) or "sd1"
        try:
            choices = schedule_types_for(sampler_name, family)
        except ValueError:
            choices = SCHEDULE_TYPES
        return gr.update(choices=choices, value=current_schedule if current_schedule in choices else choices[0])

    def refresh_models(current: str):
        choices = model_choices(ui)
        return (gr.update(choices=choices, value=current), *[gr.update(choices=choices) for _ in other_model_lists])

    picker.refresh.click(refresh_models, inputs=picker.model, outputs=[picker.model, *other_model_lists],
                         api_name=False, queue=False)
    picker.model.change(follow_model, inputs=[picker.model, sampling.sampler], outputs=[picker.note, sampling.sampler],
                        api_name=False, queue=False)
    picker.model.input(follow_model_size, inputs=[picker.model, picker.side, width, height],
                       outputs=[picker.side, width, height], api_name=False, queue=False)
    sampling.sampler.change(follow_sampler, inputs=[picker.model, sampling.sampler, sampling.schedule],
                            outputs=sampling.schedule, api_name=False, queue=False)
    sampling.random_seed.click(lambda: -1, outputs=sampling.seed, api_name=False, queue=False)


def job_updates(ui: "UIContext", request: GenerationRequest, holder: dict, show_preview: bool = True
                ) -> Iterator[tuple]:
    """Queue ``request`` and yield ``(gallery, preview, progress, info, seed)`` updates until it ends.

    While it waits the progress line says how many jobs are ahead; while it runs, the step
    and a preview. A refusal, a full queue or a failure is raised as ``gr.Error`` with its
    message (the server keeps serving).
    """
    import gradio as gr

    context = ui.context
    job = Job()
    job.message = f"Loading {request.model}…" if request.model not in context.loaded_models() else ""
    holder["job"] = job
    follower = follow_job(context, request, job, poll_seconds=POLL_SECONDS)
    try:
        while True:
            try:
                next(follower)
            except StopIteration as stop:
                result = stop.value
                break
            snapshot = job.snapshot()
            yield (gr.skip(), snapshot["preview"] if show_preview and snapshot["preview"] is not None else gr.skip(),
                   job.progress_text(), gr.skip(), gr.skip())
    except (EaselError, ValueError) as exc:  # a refusal, a full queue, a failed job: said, not a crash
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception as exc:  # noqa: BLE001 - the server must keep serving
        raise gr.Error(f"{type(exc).__name__}: {exc}", print_exception=False) from None
    finally:
        holder.pop("job", None)
    items = [(record.path or record.image, f"seed {record.seed}") for record in result.images]
    status = f"{len(result.images)} image(s) in {result.seconds:.1f}s"
    if result.interrupted:
        status += " · interrupted"
    if result.skipped:
        status += f" · {result.skipped} skipped"
    first = result.images[0] if result.images else None
    yield (items, None, status, first.infotext if first else "", first.seed if first else None)


def extras_value(extras: Any) -> dict[str, Any]:
    """The ``extras`` argument of a generation endpoint as a dict (None means none); anything else is refused."""
    import gradio as gr

    if extras is None:
        return {}
    if not isinstance(extras, dict):
        raise gr.Error(f"extras must be an object of extension control values (key: value), got "
                       f"{type(extras).__name__}", print_exception=False)
    return {str(key): value for key, value in extras.items()}


def wire_generate(run: Any, inputs: list[Any], extension_controls: list[tuple[str, Any]], outputs: list[Any],
                  triggers: list[Any], api_name: str) -> None:
    """Wire Generate so that extension controls reach ``run`` as ONE last argument, ``extras``. API 1.4.

    ``run(*inputs, extras)`` gets ``{control key: value}``; ``extension_controls`` are the
    ``(key, component)`` pairs of :meth:`webui.api.UIContext.render_generation_controls`. The
    endpoint ``api_name`` (the first trigger's) therefore takes ``inputs`` then ``extras``, a dict
    that API callers fill with the keys they need (e.g. ``{"lora.names": ["x"]}``) or leave out:
    its signature is the same whichever extensions are loaded. In the browser each trigger
    (``generate.click``, ``prompt.submit``, ...) first gathers the controls' values into a
    hidden JSON component, then runs.
    """
    import gradio as gr

    extras = gr.JSON(value={}, visible=False)
    keys = [key for key, _ in extension_controls]
    components = [component for _, component in extension_controls]

    def gather(*values: Any) -> dict[str, Any]:
        return dict(zip(keys, values))

    for index, trigger in enumerate(triggers):
        trigger(gather, inputs=components, outputs=extras, api_name=False, queue=False,
                show_progress="hidden").then(
            run, inputs=list(inputs) + [extras], outputs=outputs, api_name=api_name if index == 0 else False,
            concurrency_id="generation", concurrency_limit=None)


def stop_job(ui: "UIContext", holder: dict, which: str) -> str:
    """Interrupt (or cancel, while it waits) or skip the job this page follows."""
    job = holder.get("job")
    if job is None:
        return "Nothing is running."
    if which == "skip":
        job.skip()
        return "Skipping the current image…"
    outcome = ui.context.cancel(job)
    return "Cancelled: the job had not started." if outcome == "cancelled" else "Interrupting…"


def wire_stop_buttons(ui: "UIContext", holder: Any, interrupt: Any, skip: Any, progress: Any,
                      api_prefix: str = "") -> None:
    """Interrupt and Skip reach the job at once (outside the queue)."""
    interrupt.click(lambda value: stop_job(ui, value, "interrupt"), inputs=holder, outputs=progress,
                    api_name=f"{api_prefix}interrupt", concurrency_limit=None, queue=False)
    skip.click(lambda value: stop_job(ui, value, "skip"), inputs=holder, outputs=progress,
               api_name=f"{api_prefix}skip", concurrency_limit=None, queue=False)
