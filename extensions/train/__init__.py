"""Train: the LoRA training tab (DreamBooth or a captioned dataset), written only against webui.api.

A run trains in its own process (``accelerate launch -m webui.train``), so the UI stays
responsive; the tab follows the trainer's progress file: step and epoch, a loss plot,
validation images, and the log tail when the run fails. Cancel asks the trainer to save a
checkpoint and stop; Resume continues from the latest checkpoint. The finished LoRA lands
in ``models/Lora/`` and shows up in txt2img's LoRA picker; a full fine-tune (mode "Full
fine-tune", optional EMA) lands as a diffusers folder in ``models/Stable-diffusion/`` and shows
up in txt2img's model list.

The running process belongs to the app, not to a page: it is kept in
``context.extension_state["train"]`` (:class:`TrainState`), so a reloaded page or a second
browser re-attaches to it on load (the ``train_follow`` event, also an API endpoint) and
Cancel works from any of them. With nothing running, a page shows the last run's final state,
read from its ``progress.jsonl`` under ``context.training_dir`` (also after a server restart).

Datasets are picked from the folders inside ``<data-dir>/datasets`` only; the UI never takes
a path. The Dataset section (:mod:`.dataset_section`) creates them there from uploaded images
or a ``.zip`` and edits them (captions, automatic captions, trigger word, rename, download).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.api import (
    FULL_OUTPUT_FORMATS,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    ExtensionContext,
    Setting,
    Tab,
    TrainConfig,
    TrainingConfigError,
    TrainingProcess,
    UIContext,
    hookimpl,
    read_training_events,
    training_log_tail,
)

from .dataset_section import CaptionerCache, dataset_settings, render_dataset_section

EASEL_API_VERSION = "2.0"
POLL_SECONDS = 1.0
SCOPE = "train"
# how a full fine-tune is saved (TrainConfig.full_output_format)
FULL_OUTPUT_FORMAT_LABELS = {"diffusers": "diffusers folder",
                             "safetensors": "single .safetensors checkpoint (A1111, Forge, ComfyUI)",
                             "both": "both"}
FULL_OUTPUT_FORMAT_CHOICES = [(FULL_OUTPUT_FORMAT_LABELS.get(value, value), value) for value in FULL_OUTPUT_FORMATS]
FINISHED = ("done", "cancelled")
ENDED = (*FINISHED, "error")  # the trainer's last events: after one of these it only exits
EXIT_GRACE_SECONDS = 60.0


@dataclass
class TrainState:
    """The Train tab's per-app state, shared by every browser session of one app.

    ``current`` is the run this app started last (running or finished); ``lock`` keeps two
    sessions from starting runs at the same moment.
    """

    current: TrainingProcess | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    captioners: CaptionerCache = field(default_factory=CaptionerCache, repr=False)


def train_state(context: ExtensionContext) -> TrainState:
    """This app's :class:`TrainState` (``context.extension_state["train"]``, made on first use)."""
    return context.extension_state.setdefault(SCOPE, TrainState())


@hookimpl
def app_started(context):
    """Create the Train tab's per-app state (see :class:`TrainState`)."""
    train_state(context)


@hookimpl
def register_settings(register):
    """How many processes ``accelerate launch`` starts (1 = one GPU or the CPU)."""
    register(Setting(key="train.num_processes", label="Training processes (accelerate launch --num_processes)",
                     default=1, kind="int", minimum=1, maximum=64, section="Training",
                     help="More than 1 trains data-parallel on several GPUs (or CPU processes with gloo)"))
    register(Setting(key="train.queue_waits", label="Image jobs wait while a training run is going",
                     default=QUEUE_WAITS[0], kind="choice", choices=QUEUE_WAITS, section="Training",
                     help="On one GPU a job beside a training run would run out of memory; on the CPU both only slow "
                          "each other down"))
    for setting in dataset_settings():
        register(setting)


QUEUE_WAITS = ["when it uses a GPU", "always", "never"]


def run_uses_a_gpu(config: TrainConfig) -> bool:
    """Whether a run with this config trains on a CUDA GPU (``auto`` does when one is there)."""
    import torch

    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


@hookimpl
def device_in_use(context):
    """While a training run holds the GPU the image queue runs on, image jobs wait (and say why)."""
    process = train_state(context).current
    if process is None or not process.running:
        return None
    policy = context.setting("train.queue_waits", QUEUE_WAITS[0])
    if policy == "never":
        return None
    if policy == QUEUE_WAITS[0] and not (run_uses_a_gpu(process.config) and context.device.type == "cuda"):
        return None
    summary = summarize(read_training_events(process.run_dir))
    step = f", step {summary['step']}/{summary['total']}" if summary.get("total") else ""
    where = "the GPU" if run_uses_a_gpu(process.config) else "the CPU"
    return (f"a training run ({process.config.output_name}{step}) is using {where}; image jobs start when it ends "
            "or is cancelled (Train tab)")


@hookimpl
def register_tabs(register):
    """The Train tab, after txt2img."""
    register(Tab(id="train", label="Train", render=render_train_tab, order=40))


def list_datasets(datasets_dir: Path) -> list[str]:
    """Names of the dataset folders (direct subfolders of the datasets folder)."""
    if not Path(datasets_dir).is_dir():
        return []
    return sorted(p.name for p in Path(datasets_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def dataset_path(datasets_dir: Path, name: str) -> Path:
    """The folder of a listed dataset; anything not listed is refused (no arbitrary paths)."""
    if not name or name not in list_datasets(datasets_dir):
        raise TrainingConfigError(f"Pick a dataset folder inside {datasets_dir} (got {name!r})")
    return Path(datasets_dir) / name


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the tab shows, from the trainer's events."""
    summary: dict[str, Any] = {"status": "starting", "step": 0, "total": None, "epoch": 0.0, "losses": [],
                               "images": [], "skipped": [], "message": "", "eval": [], "checkpoint": ""}
    for event in events:
        kind = event.get("event")
        if kind == "start":
            summary.update(status="running", total=event.get("total_steps"), step=event.get("step", 0),
                           mode=event.get("mode", "lora"))
        elif kind == "step":
            summary.update(step=event["step"], total=event.get("total_steps"), epoch=event.get("epoch", 0.0))
            summary["losses"].append((event["step"], event["loss"]))
        elif kind == "eval":
            summary["eval"].append((event["step"], event["loss"]))
        elif kind == "checkpoint":
            summary["checkpoint"] = event.get("path", "")
        elif kind == "validation":
            summary["images"] = [(path, f"step {event['step']}: {prompt}")
                                 for path, prompt in zip(event.get("images", []), event.get("prompts", []))]
        elif kind == "skipped":
            summary["skipped"] = [f"{item['file']} ({item['reason']})" for item in event.get("files", [])]
        elif kind == "class_images":
            summary["message"] = f"Generating {event['want'] - event['have']} class images…"
        elif kind in ("done", "cancelled", "error"):
            summary["status"] = kind
            summary["single_file"] = event.get("single_file", "")
            summary["message"] = event.get("message") or event.get("output") or event.get("checkpoint") or ""
    return summary


def settle(summary: dict[str, Any], returncode: int | None) -> dict[str, Any]:
    """The summary of a run whose trainer is no longer running.

    A run that did not end with ``done`` or ``cancelled`` is ``failed`` when it wrote an error
    or its process is known (``returncode``), else ``interrupted`` (the server was restarted
    while it trained, so nothing is left to finish it; Resume can).
    """
    if summary["status"] in FINISHED:
        return summary
    if summary["status"] == "error" or returncode is not None:
        summary["status"] = "failed"
        summary["message"] = summary["message"] or f"the trainer exited with code {returncode}"
    else:
        summary["status"] = "interrupted"
        summary["message"] = "No trainer of this server is running it (was the server restarted while it trained?)."
    return summary


def progress_text(summary: dict[str, Any], name: str) -> str:
    """The progress line (Markdown) of run ``name``: status, step, epoch, losses and what to do next."""
    status = summary["status"]
    total = summary["total"] or "?"
    line = f"**{status}** · step {summary['step']}/{total} · epoch {summary['epoch']:.2f}"
    if summary["losses"]:
        line += f" · loss {summary['losses'][-1][1]:.4f}"
    if summary["eval"]:
        line += " · eval loss " + " → ".join(f"{loss:.4f}" for _, loss in summary["eval"])
    if name:
        line += f" · run `{name}`"
    if summary["message"]:
        line += f"\n\n{summary['message']}"
    if status == "done" and summary.get("mode") == "full":
        single_file = summary.get("single_file") or ""
        if summary["message"] != single_file:  # the diffusers folder was written (formats diffusers, both)
            line += f"\n\nModel **{name}** saved to Stable-diffusion; pick it in txt2img's model list."
        if single_file:
            line += (f"\n\nCheckpoint **{Path(single_file).name}** saved to Stable-diffusion (one file that "
                     "AUTOMATIC1111, Forge and ComfyUI load); txt2img lists it too.")
    elif status == "done":
        line += f"\n\nLoRA **{name}** saved; pick it in txt2img (LoRA) or write `<lora:{name}:1>`."
    if status == "cancelled" or (status in ("interrupted", "failed") and summary.get("checkpoint")):
        line += "\n\nStopped; the last checkpoint is kept — **Resume** continues from it."
    if summary["skipped"]:
        line += "\n\nSkipped (unreadable): " + ", ".join(summary["skipped"])
    return line


def finishing(process: TrainingProcess, timeout: float = EXIT_GRACE_SECONDS) -> bool:
    """Wait up to ``timeout`` seconds for a trainer that reported its end to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while process.running and time.monotonic() < deadline:
        time.sleep(0.2)
    return not process.running


def latest_run_dir(training_dir: Path) -> Path | None:
    """The run folder under ``training_dir`` whose progress file changed last, or None."""
    newest: tuple[float, Path] | None = None
    for progress_file in Path(training_dir).glob("*/progress.jsonl"):
        try:
            stamp = progress_file.stat().st_mtime
        except OSError:  # removed meanwhile (a run starting afresh)
            continue
        if newest is None or stamp > newest[0]:
            newest = (stamp, progress_file.parent)
    return None if newest is None else newest[1]


def render_train_tab(ui: UIContext) -> None:
    """Build the Train tab: the form, Start/Cancel/Resume, and outputs that re-attach on page load."""
    import gradio as gr
    import pandas as pd

    context = ui.context
    context.datasets_dir.mkdir(parents=True, exist_ok=True)
    last = ui.last_used(SCOPE)
    state = train_state(context)
    def trainable_models() -> list[str]:
        """The listed models of a family the trainer supports."""
        return [source.name for source in context.list_models()
                if (context.family_of(source.name) or "sd1") in ("sd1", "sd2", "sdxl", "sd3")]

    models = trainable_models()

    gr.Markdown(f"Train a LoRA on a folder of images from `{context.datasets_dir}` (upload one in the Dataset "
                "section below, or put it there; captions in `.txt` files, "
                "a `metadata.jsonl`, or kohya `<repeats>_<name>` folders; or DreamBooth with an instance prompt).")
    with gr.Row():
        dataset = gr.Dropdown(choices=list_datasets(context.datasets_dir), value=None, label="Dataset folder",
                              elem_id="train-dataset", scale=3, allow_custom_value=True)  # checked by dataset_path
        refresh = gr.Button("Refresh", scale=0, min_width=80)
        model = gr.Dropdown(choices=models, value=last.get("model", context.default_model), label="Base model",
                            elem_id="train-model", scale=3)
        ui.register_model_list(model, trainable_models)  # a downloaded model can be trained on at once
        output_name = gr.Textbox(value=last.get("output_name", "my_lora"), label="Output name", elem_id="train-name",
                                 scale=2)
    render_dataset_section(ui, dataset, state.captioners)
    with gr.Row():
        instance_prompt = gr.Textbox(value=last.get("instance_prompt", ""), label="Instance prompt (DreamBooth)",
                                     placeholder="a photo of sks dog", scale=3)
        use_captions = gr.Checkbox(value=last.get("use_captions", True), label="Use captions")
        prior = gr.Checkbox(value=False, label="Prior preservation")
        class_prompt = gr.Textbox(value="", label="Class prompt", placeholder="a photo of a dog", scale=2)
        num_class = gr.Number(value=50, precision=0, label="Class images")
    with gr.Row():
        resolution = gr.Number(value=last.get("resolution", 512), precision=0, label="Resolution", elem_id="train-resolution")
        rank = gr.Number(value=last.get("rank", 16), precision=0, label="Rank")
        alpha = gr.Number(value=last.get("alpha", 16), label="Alpha")
        learning_rate = gr.Number(value=last.get("learning_rate", 1e-4), label="Learning rate")
        scheduler = gr.Dropdown(choices=list(LR_SCHEDULERS), value="constant", label="LR scheduler")
        warmup = gr.Number(value=0, precision=0, label="Warm-up steps")
    with gr.Row():
        max_steps = gr.Number(value=last.get("max_steps", 500), precision=0, label="Steps (0 = use epochs)",
                              elem_id="train-steps")
        epochs = gr.Number(value=1, precision=0, label="Epochs")
        batch_size = gr.Number(value=1, precision=0, label="Batch size")
        accumulation = gr.Number(value=1, precision=0, label="Gradient accumulation")
        checkpoint_every = gr.Number(value=100, precision=0, label="Checkpoint every N steps")
        keep = gr.Number(value=3, precision=0, label="Keep last K checkpoints")
    with gr.Row():
        mixed_precision = gr.Dropdown(choices=list(MIXED_PRECISION), value="no", label="Mixed precision")
        checkpointing = gr.Checkbox(value=False, label="Gradient checkpointing")
        adam8 = gr.Checkbox(value=False, label="8-bit AdamW (CUDA + bitsandbytes)")
        text_encoder = gr.Checkbox(value=False, label="Train text encoder")
        min_snr = gr.Number(value=0, label="Min-SNR gamma (0 = off)")
        noise_offset = gr.Number(value=0, label="Noise offset")
        seed = gr.Number(value=42, precision=0, label="Seed")
    with gr.Row():
        random_flip = gr.Checkbox(value=False, label="Random flip")
        center_crop = gr.Checkbox(value=True, label="Center crop")
        bucketing = gr.Checkbox(value=False, label="Aspect-ratio bucketing")
        validation_prompts = gr.Textbox(value="", label="Validation prompts (one a line)", lines=2, scale=3)
        validation_every = gr.Number(value=0, precision=0, label="Validate every N steps (0 = at the end)")
    with gr.Row():
        mode = gr.Radio(choices=[("LoRA", "lora"), ("Full fine-tune", "full")], value=last.get("mode", "lora"),
                        label="Mode", elem_id="train-mode")
        use_ema = gr.Checkbox(value=False, label="EMA (full fine-tune)", elem_id="train-ema")
        qlora = gr.Checkbox(value=False, label="QLoRA: NF4-quantized base (CUDA + bitsandbytes)", elem_id="train-qlora")
        full_output_format = gr.Dropdown(choices=FULL_OUTPUT_FORMAT_CHOICES,
                                         value=last.get("full_output_format", "diffusers"),
                                         label="Full fine-tune saved as", elem_id="train-full-format")
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        cancel = gr.Button("Cancel", elem_id="train-cancel")
        resume = gr.Button("Resume", elem_id="train-resume")
    progress = gr.Markdown("", elem_id="train-progress")
    loss_plot = gr.LinePlot(value=pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", title="Training loss",
                            elem_id="train-loss")
    gallery = gr.Gallery(label="Validation images", columns=4, elem_id="train-validation", interactive=False)
    log_box = gr.Textbox(label="Log (tail)", lines=8, visible=True, interactive=False, elem_id="train-log")

    # The form, once: the keys are the parameter names of the train_start / train_resume API endpoints
    # (in this order for positional callers) and of build_config's ``values``.
    form = dict(dataset=dataset, model=model, output_name=output_name, instance_prompt=instance_prompt,
                use_captions=use_captions, prior=prior, class_prompt=class_prompt, num_class=num_class,
                resolution=resolution, rank=rank, alpha=alpha, learning_rate=learning_rate, scheduler=scheduler,
                warmup=warmup, max_steps=max_steps, epochs=epochs, batch_size=batch_size, accumulation=accumulation,
                checkpoint_every=checkpoint_every, keep=keep, mixed_precision=mixed_precision,
                checkpointing=checkpointing, adam8=adam8, text_encoder=text_encoder, min_snr=min_snr,
                noise_offset=noise_offset, seed=seed, random_flip=random_flip, center_crop=center_crop,
                bucketing=bucketing, validation_prompts=validation_prompts, validation_every=validation_every,
                mode=mode, use_ema=use_ema, qlora=qlora, full_output_format=full_output_format)
    outputs = [progress, loss_plot, gallery, log_box]

    def build_config(values: dict[str, Any], *, resume_run: bool) -> TrainConfig:
        """The validated TrainConfig of the form ``values`` (keys as in ``form``)."""
        v = values
        name = (v["output_name"] or "").strip()
        mode_value = v.get("mode") or "lora"
        config = TrainConfig(
            model=v["model"] or context.default_model, models_dir=str(context.models_dir),
            dataset_dir=str(dataset_path(context.datasets_dir, v["dataset"])), output_name=name,
            run_dir=str(context.training_dir / name) if name and "/" not in name and "\\" not in name else "",
            instance_prompt=v["instance_prompt"] or "", use_captions=bool(v["use_captions"]),
            prior_preservation=bool(v["prior"]), class_prompt=v["class_prompt"] or "",
            num_class_images=int(v["num_class"] or 0), resolution=int(v["resolution"]), rank=int(v["rank"]),
            alpha=float(v["alpha"]), learning_rate=float(v["learning_rate"]), lr_scheduler=v["scheduler"],
            lr_warmup_steps=int(v["warmup"] or 0), max_steps=int(v["max_steps"] or 0), epochs=int(v["epochs"] or 0),
            batch_size=int(v["batch_size"]), gradient_accumulation_steps=int(v["accumulation"]),
            checkpoint_every=int(v["checkpoint_every"] or 0), keep_checkpoints=int(v["keep"] or 1),
            mixed_precision=v["mixed_precision"], gradient_checkpointing=bool(v["checkpointing"]),
            use_8bit_adam=bool(v["adam8"]), train_text_encoder=bool(v["text_encoder"]),
            min_snr_gamma=float(v["min_snr"] or 0), noise_offset=float(v["noise_offset"] or 0), seed=int(v["seed"]),
            random_flip=bool(v["random_flip"]), center_crop=bool(v["center_crop"]), bucketing=bool(v["bucketing"]),
            validation_prompts=[line.strip() for line in (v["validation_prompts"] or "").splitlines() if line.strip()],
            validation_every=int(v["validation_every"] or 0), resume=resume_run, mode=mode_value,
            use_ema=bool(v.get("use_ema")) and mode_value == "full",
            full_output_format=(v.get("full_output_format") or "diffusers") if mode_value == "full" else "diffusers",
            quantize_base="nf4" if v.get("qlora") else "none", device="auto",
        )
        config.validate()
        return config

    def view(summary: dict[str, Any], name: str, log: Any) -> tuple:
        """The four outputs (progress, loss plot, gallery, log) for one summary."""
        frame = pd.DataFrame({"step": [s for s, _ in summary["losses"]],
                              "loss": [loss for _, loss in summary["losses"]]})
        return progress_text(summary, name), frame, summary["images"], log

    def follow(process: TrainingProcess, *, raise_on_failure: bool = True):
        """Yield the tab's outputs until the training process ends (a failure raises when asked)."""
        name = process.config.output_name
        while True:
            alive = process.running
            summary = summarize(process.events())
            if alive:
                yield view(summary, name, gr.skip())
                time.sleep(POLL_SECONDS)
                continue
            if summary["status"] in FINISHED:
                yield view(summary, name, "")
                return
            settle(summary, process.returncode)
            yield view(summary, name, process.log_tail(60))
            if raise_on_failure:
                raise gr.Error(f"Training failed: {summary['message']}", print_exception=False)
            return

    def launch(values: dict[str, Any], *, resume_run: bool):
        """Validate the form, start the trainer (one run per app at a time) and follow it."""
        try:
            config = build_config(values, resume_run=resume_run)
        except (TrainingConfigError, ValueError, TypeError, KeyError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        with state.lock:
            current = state.current
            if current is not None and current.running and summarize(current.events())["status"] in ENDED:
                finishing(current)  # it reported its end and is only exiting
            if current is not None and current.running:
                raise gr.Error(f"The run `{current.config.output_name}` is still training; cancel it first.",
                               print_exception=False)
            ui.remember(SCOPE, {"model": config.model, "output_name": config.output_name,
                                "instance_prompt": config.instance_prompt, "use_captions": config.use_captions,
                                "resolution": config.resolution, "rank": config.rank, "alpha": config.alpha,
                                "learning_rate": config.learning_rate, "max_steps": config.max_steps,
                                "mode": config.mode, "full_output_format": config.full_output_format})
            process = TrainingProcess(config, num_processes=int(context.setting("train.num_processes", 1)))
            process.start(fresh=not resume_run)
            state.current = process
        yield from follow(process)

    def start_run(**values):
        """Start a fresh training run from the form and follow it to the end (API: ``train_start``)."""
        yield from launch(values, resume_run=False)

    def resume_run(**values):
        """Continue the run of this output name from its latest checkpoint (API: ``train_resume``)."""
        yield from launch(values, resume_run=True)

    def cancel_run() -> str:
        """Ask the running trainer, whichever page started it, to save a checkpoint and stop (API: ``train_cancel``)."""
        process = state.current
        if process is None or not process.running:
            return "Nothing is training."
        process.cancel()
        return f"Stopping `{process.config.output_name}` after the current step (a checkpoint is saved)…"

    def reattach():
        """On page load: follow the running run to its end, else show the last run's final state (``train_follow``)."""
        process = state.current
        if process is not None and process.running:
            yield from follow(process, raise_on_failure=False)
            return
        if process is not None:
            run_dir, name, returncode = process.run_dir, process.config.output_name, process.returncode
        else:  # nothing started since the server started: the newest run folder on disk, if any
            run_dir = latest_run_dir(context.training_dir)
            if run_dir is None:
                yield "", pd.DataFrame({"step": [], "loss": []}), [], ""
                return
            name, returncode = run_dir.name, None
        summary = settle(summarize(read_training_events(run_dir)), returncode)
        yield view(summary, name, "" if summary["status"] in FINISHED else training_log_tail(run_dir, 60))

    start.click(start_run, inputs_kwargs=form, outputs=outputs, api_name="train_start", concurrency_id="training")
    resume.click(resume_run, inputs_kwargs=form, outputs=outputs, api_name="train_resume", concurrency_id="training")
    cancel.click(cancel_run, outputs=progress, api_name="train_cancel", queue=False)
    # every open page follows the run; each follower only polls a file, so they are not limited
    ui.on_page_load(reattach, outputs=outputs, api_name="train_follow", concurrency_limit=None,
                    show_progress="minimal")
    refresh.click(lambda current: gr.update(choices=list_datasets(context.datasets_dir), value=current),
                  inputs=dataset, outputs=dataset, api_name=False, queue=False)


@hookimpl
def register_api_routes(router, context):
    """Training over REST: ``/easel/v1/training/runs`` (start, list), ``.../{name}`` (status, loss history),
    ``.../{name}/cancel``, ``.../{name}/resume`` (see rest.py)."""
    from .rest import register_routes

    register_routes(router, context)
