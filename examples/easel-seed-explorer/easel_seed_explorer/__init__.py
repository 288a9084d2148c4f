"""Seed explorer: run one prompt over consecutive seeds and compare the images side by side.

An example of a third-party Easel extension (an installable package; see its README). It
shows the three things most extensions do: a tab (``register_tabs``), jobs submitted through
the app's queue (``context.submit`` and ``follow_job``, with progress), and an infotext field
(``infotext_fields``) that records what the extension did on every image it made.
"""

from __future__ import annotations

from typing import Any

from webui.api import GenerationRequest, Job, QueueFullError, Tab, UIContext, follow_job, hookimpl

EASEL_API_VERSION = "2.0"

#: The key of this extension's value in a job's ``request.extras``: "base+i".
EXTRA_KEY = "seed_explorer.seed"
MAX_IMAGES = 8


def explorer_requests(prompt: str, model: str, base_seed: int, count: int, size: int, steps: int) -> list[GenerationRequest]:
    """One txt2img request per seed, ``base_seed`` to ``base_seed + count - 1``, marked as this extension's."""
    count = max(1, min(int(count), MAX_IMAGES))
    base_seed = int(base_seed)
    return [GenerationRequest(prompt=prompt, model=model, seed=base_seed + index, width=int(size), height=int(size),
                              steps=int(steps), extras={EXTRA_KEY: f"{base_seed}+{index}"})
            for index in range(count)]


def render_seed_explorer(ui: UIContext) -> None:
    """The tab: prompt, model, base seed, count, size, steps; a gallery of the results."""
    import gradio as gr

    context = ui.context
    models = [source.name for source in context.list_models()]
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2, scale=4)
        run = gr.Button("Explore seeds", variant="primary", scale=1)
    with gr.Row():
        model = gr.Dropdown(models, value=context.default_model, label="Model")
        base_seed = gr.Number(value=1, precision=0, label="First seed")
        count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images")
        size = gr.Slider(64, 1024, value=512, step=64, label="Size")
        steps = gr.Slider(1, 50, value=20, step=1, label="Steps")
    status = gr.Markdown()
    gallery = gr.Gallery(label="By seed", columns=4)

    def explore(prompt_text: str, model_name: str, first: float, images: float, side: float, step_count: float):
        requests = explorer_requests(prompt_text, model_name, int(first), int(images), int(side), int(step_count))
        done: list[tuple[Any, str]] = []
        for number, request in enumerate(requests, start=1):
            try:
                following = follow_job(context, request, Job())
                while True:
                    job = next(following)
                    yield gr.update(), f"Image {number}/{len(requests)}: {job.progress_text()}"
            except StopIteration as finished:
                result = finished.value
                done += [(record.image, f"seed {record.seed}") for record in result.images]
                yield done, f"Image {number}/{len(requests)} done"
            except QueueFullError as full:
                raise gr.Error(str(full), print_exception=False) from None
        yield done, f"{len(done)} images, seeds {requests[0].seed} to {requests[-1].seed}"

    run.click(explore, inputs=[prompt, model, base_seed, count, size, steps], outputs=[gallery, status],
              api_name="seed_explorer", concurrency_limit=None)


@hookimpl
def register_tabs(register):
    """The Seed explorer tab, after Easel's own tabs."""
    register(Tab(id="seed_explorer", label="Seed explorer", render=render_seed_explorer, order=80))


@hookimpl
def infotext_fields(request, model):
    """``Seed explorer: base+i`` on the images this extension queued; nothing on other jobs."""
    value = request.extras.get(EXTRA_KEY)
    return {"Seed explorer": value} if value else None
