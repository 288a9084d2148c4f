"""The one generation path of every image job: txt2img, img2img and inpaint, for the UI,
the REST API, the Background tab and the tests. It is the only place that calls a diffusers
pipeline for an image job (training aside).

request -> validation (common fields, then the task's) -> device lock + loaded model
(pipeline manager) -> the task's checks -> hooks -> the task's pipeline (``from_pipe`` over
the loaded components) -> scheduler and prompt embeddings -> diffusers call with a step
callback (progress, preview, interrupt/skip) -> optional SDXL refiner -> the task finishes
each image (inpaint pastes the kept pixels back) -> infotext -> PNG saved under
``outputs/<task>/<date>/`` -> result. Out of memory: advice, and a retry under a lower
profile when an extension asks for it.

What differs between tasks lives in :mod:`webui.tasks`; jobs wait in :mod:`webui.queue`.

Seeds follow AUTOMATIC1111: image ``i`` of a job gets ``seed + i``. Noise comes from a
CPU ``torch.Generator`` (infotext ``RNG: CPU``), so a seed gives the same image on any
device.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from webui import __version__
from webui.errors import EaselError, GenerationError
from webui.infotext import build_infotext
from webui.jobs import GenerationRequest, GenerationResult, ImageRecord, Job, RequestError, resolve_seed
from webui.outputs import save_image
from webui.tasks import Prepared, Task, get_task, task_pipeline
from webui.pipelines.schedulers import make_scheduler, resolve_sampler, samplers_for, schedule_types_for
from webui.previews import latents_to_preview
from webui.prompts import encode_prompts, needs_embeddings

if TYPE_CHECKING:
    from webui.context import EaselContext
    from webui.pipelines.manager import LoadedModel

log = logging.getLogger(__name__)

PREVIEW_EVERY_STEPS = 2


def prompt_arguments(pipe: Any, family: str, prompt: str, negative_prompt: str) -> dict[str, Any]:
    """Plain strings when diffusers can take them as they are, else weighted embeddings."""
    if needs_embeddings(pipe, prompt, negative_prompt):
        return encode_prompts(pipe, family, prompt, negative_prompt)
    return {"prompt": prompt, "negative_prompt": negative_prompt or None}


INFOTEXT_KEY_FORBIDDEN = (":", ",", "\n", "\r", '"')


def clean_extension_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Drop extension infotext keys A1111 could not parse back (they would corrupt the line)."""
    cleaned = {}
    for key, value in fields.items():
        if isinstance(key, str) and key.strip() and not any(mark in key for mark in INFOTEXT_KEY_FORBIDDEN):
            cleaned[key.strip()] = value
        else:
            log.warning("Ignoring infotext field %r from an extension: keys may not contain : , or quotes", key)
    return cleaned


def extension_infotext_fields(context: "EaselContext", request: GenerationRequest, model: "LoadedModel") -> dict:
    """The ``infotext_fields`` of every extension for this job, merged and cleaned."""
    merged: dict[str, Any] = {}
    for fields in context.plugins.call("infotext_fields", request=request, model=model):
        merged.update(clean_extension_fields(fields))
    return merged


def extension_call_kwargs(context: "EaselContext", request: GenerationRequest, model: "LoadedModel") -> dict:
    """The ``pipeline_call_kwargs`` of every extension for this job, merged (later ones win)."""
    merged: dict[str, Any] = {}
    for kwargs in context.plugins.call("pipeline_call_kwargs", request=request, model=model):
        merged.update(kwargs)
    return merged


def out_of_memory_answers(context: "EaselContext", request: GenerationRequest, model: "LoadedModel",
                          error: BaseException) -> tuple[list[str], bool]:
    """Free the memory, then ask the ``out_of_memory`` hooks: (advice sentences, retry asked for)."""
    _free_memory(model.device)
    answers = ask_out_of_memory(context, request, model, error)
    _free_memory(model.device)
    return answers.advice, answers.retry


@dataclass
class OutOfMemoryAnswers:
    """What the ``out_of_memory`` hooks said about one out-of-memory failure, merged."""

    advice: list[str] = field(default_factory=list)
    """Sentences telling the user which options would help."""
    retry: bool = False
    """Whether an extension asked for the job to run again."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Setting values the retry runs under (this job only; earlier extensions win on a clash)."""


def ask_out_of_memory(context: "EaselContext", request: GenerationRequest, model: "LoadedModel",
                      error: BaseException) -> OutOfMemoryAnswers:
    """Ask the ``out_of_memory`` hooks (the memory is already freed) and merge their answers."""
    answers = OutOfMemoryAnswers()
    try:
        for answer in context.plugins.call("out_of_memory", request=request, model=model, context=context,
                                           error=error):
            if not isinstance(answer, dict):
                continue
            if answer.get("advice"):
                answers.advice.append(str(answer["advice"]))
            if answer.get("retry"):
                answers.retry = True
                for key, value in dict(answer.get("settings") or {}).items():
                    answers.settings.setdefault(str(key), value)
    except EaselError as refusal:
        answers.advice.append(str(refusal))
    return answers


def model_infotext_name(model: "LoadedModel") -> str:
    """The ``Model`` infotext value: a file's name without its extension, else the listed name."""
    return model.source.name.rsplit(".", 1)[0] if model.source.kind == "file" else model.source.name


def build_image_infotext(request: GenerationRequest, model: "LoadedModel", seed: int, extra: dict[str, Any],
                         task_fields: dict[str, Any] | None = None) -> str:
    """A1111-format infotext for one image (sampler and schedule type as A1111 1.9+ writes them).

    Order of precedence: the core's fields, then the task's (``Denoising strength``, ``Mask
    blur``, ...), then the caller's ``request.infotext_extra``; extensions' fields (``extra``)
    only add keys, they never replace one of those.
    """
    sampler, schedule_type = resolve_sampler(request.sampler, request.schedule_type, model.family)
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.model_hash,
        "Model": model_infotext_name(model),
        "RNG": "CPU",
    }
    if request.refiner is not None:
        params["Refiner"] = request.refiner.model
        params["Refiner switch at"] = request.refiner.switch_at
    params.update(task_fields or {})
    params.update(request.infotext_extra or {})
    params.update({key: value for key, value in extra.items() if key not in params})
    params["Version"] = f"Easel {__version__}"
    return build_infotext(request.prompt, request.negative_prompt, params)


def effective_steps(request: GenerationRequest) -> int:
    """The denoising steps the pipeline really runs: img2img and inpaint skip the first ``1 - strength``."""
    if request.task == "txt2img":
        return int(request.steps)
    return min(int(int(request.steps) * float(request.denoising_strength)), int(request.steps))


def check_sampler(request: GenerationRequest, family: str) -> None:
    """Refuse a sampler or schedule type the model's family cannot use, naming the valid ones."""
    if request.sampler not in samplers_for(family):
        raise RequestError(
            f"Sampler {request.sampler!r} does not work with {family} models; "
            f"choose one of: {', '.join(samplers_for(family))}"
        )
    allowed_schedules = schedule_types_for(request.sampler, family)
    if request.schedule_type not in allowed_schedules:
        raise RequestError(f"Schedule type {request.schedule_type!r} does not work with {request.sampler}; "
                           f"choose one of: {', '.join(allowed_schedules)}")


class _StepReporter:
    """The diffusers ``callback_on_step_end``: progress, previews, Interrupt and Skip.

    An extension's own ``callback_on_step_end`` (from ``pipeline_call_kwargs``) runs first,
    and what it returns goes back to the pipeline.
    """

    def __init__(self, job: Job, family: str, step_offset: int = 0, then: Any = None) -> None:
        self.job = job
        self.family = family
        self.step_offset = step_offset
        self.then = then

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        answer = (self.then(pipe, step, timestep, callback_kwargs) or {}) if self.then is not None else {}
        number = self.step_offset + step + 1
        preview = None
        latents = callback_kwargs.get("latents")
        if latents is not None and number % PREVIEW_EVERY_STEPS == 0:
            try:
                preview = latents_to_preview(latents, self.family)
            except Exception as exc:  # a preview must never break a generation
                log.debug("preview failed: %s", exc)
        self.job.step(number, preview)
        if self.job.interrupted or self.job.skip_requested:  # checked last: a press during this step counts
            pipe._interrupt = True
        return answer


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_generation(context: "EaselContext", request: GenerationRequest, job: Job | None = None,
                   on_image: Callable[[int, ImageRecord], None] | None = None) -> GenerationResult:
    """Run one image job of any task; raises :class:`RequestError` / :class:`GenerationError` with user messages.

    Callers normally go through the queue (``context.generate``); this runs the job at once
    on the calling thread. ``on_image(index, record)``, when given, gets each image as soon as
    it is finished, just after its ``image`` event (a Ray worker streams it to the front). Out of memory: the memory is freed, the ``out_of_memory`` hooks
    say which option would help and may switch to a lower-memory profile, in which case the
    job runs again (at most ``MAX_OOM_RETRIES`` times) on the model reloaded with those settings.
    """
    from webui.memory import MAX_OOM_RETRIES

    job = job or Job()
    request.validate(context.max_side)
    task = get_task(request.task)
    retries = 0
    job_settings: dict[str, Any] = {}  # what the out_of_memory hooks changed, for this job only
    try:
        while True:
            try:
                with context.settings.for_this_job(job_settings):
                    return _run_generation_once(context, request, task, job, on_image)
            except _OutOfMemory as oom:
                if oom.retry and retries < MAX_OOM_RETRIES and not job.interrupted:
                    retries += 1
                    log.warning("Out of memory; retrying with a lower-memory profile (%d/%d): %s", retries,
                                MAX_OOM_RETRIES, oom.settings or "as the extensions set it")
                    job_settings.update(oom.settings)
                    context.pipelines.reconfigure()  # the model loads again, configured with the job's settings
                    continue
                raise GenerationError(oom.message) from oom.__cause__
    finally:
        if job_settings:  # the loaded model was configured for this job: the next job loads its own
            context.pipelines.reconfigure()


class _OutOfMemory(Exception):
    def __init__(self, message: str, retry: bool, settings: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.settings = dict(settings or {})


def _out_of_memory(context: "EaselContext", request: GenerationRequest, model: "LoadedModel",
                   exc: BaseException) -> _OutOfMemory:
    """Free the memory, ask the memory extensions for advice (and a retry), build the message."""
    _free_memory(model.device)
    answers = ask_out_of_memory(context, request, model, exc)
    _free_memory(model.device)
    hint = " ".join(answers.advice) or ("Try a smaller size or batch, or a lower-memory profile "
                                "(--medvram / --lowvram, VAE tiling, CPU offload).")
    message = (f"Out of memory on {model.device} at {request.width}x{request.height}, batch size "
               f"{request.batch_size}. {hint} The server is still running.")
    return _OutOfMemory(message, answers.retry, answers.settings)


def _run_generation_once(context: "EaselContext", request: GenerationRequest, task: Task, job: Job,
                         on_image: Callable[[int, ImageRecord], None] | None) -> GenerationResult:
    result = GenerationResult()
    started = time.monotonic()
    oom: _OutOfMemory | None = None
    with context.pipelines.use(request.model) as model:
        check_sampler(request, model.family)
        task.check_model(request, model)
        try:
            context.plugins.call("before_generation", request=request, model=model, context=context)
            _run_batches(context, request, task, model, job, result, on_image)
        except EaselError:
            raise
        except torch.OutOfMemoryError as exc:
            oom = _out_of_memory(context, request, model, exc)
            oom.__cause__ = exc
        except Exception as exc:
            log.exception("Generation failed")
            _free_memory(model.device)
            raise GenerationError(f"Generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            result.interrupted = job.interrupted
            result.seconds = time.monotonic() - started
            context.plugins.call("after_generation", request=request, model=model, result=result)
    if oom is not None:
        raise oom
    return result


def _run_batches(context: "EaselContext", request: GenerationRequest, task: Task, model: "LoadedModel", job: Job,
                 result: GenerationResult, on_image: Callable[[int, ImageRecord], None] | None) -> None:
    pipe = task_pipeline(model, task.pipeline_task(request, model))
    prepared = task.prepare(request, model)
    if "width" not in prepared.arguments and "width" in inspect.signature(pipe.__call__).parameters:
        # img2img pipelines that take a size (SD3's) would otherwise work at their default size
        prepared.arguments.update(width=request.width, height=request.height)
    base_seed = resolve_seed(request.seed)
    prompt_kwargs = prompt_arguments(pipe, model.family, request.prompt, request.negative_prompt)
    extra_fields = extension_infotext_fields(context, request, model)
    call_kwargs = extension_call_kwargs(context, request, model)
    total = request.batch_count * request.batch_size
    for batch_index in range(request.batch_count):
        if job.interrupted:
            break
        first = batch_index * request.batch_size
        seeds = [base_seed + first + offset for offset in range(request.batch_size)]
        job.start_image(first, total, effective_steps(request))
        # A fresh scheduler per batch; samplers with their own noise (DPM++ SDE) take the batch's seed.
        pipe.scheduler = make_scheduler(model.base_scheduler_config, request.sampler, request.schedule_type,
                                        model.family, seed=seeds[0])
        images = _draw(context, request, model, pipe, job, seeds, prompt_kwargs, prepared, call_kwargs)
        for index, (image, seed) in enumerate(zip(images, seeds)):
            image = task.finish(prepared, image)
            infotext = build_image_infotext(request, model, seed, extra_fields, prepared.infotext)
            record = keep_image(context.outputs_dir, request, task, job, first + index, image, seed, infotext)
            result.images.append(record)
            if on_image is not None:
                on_image(first + index, record)
        if job.take_skip():
            result.skipped += 1


def keep_image(outputs_dir: Path, request: GenerationRequest, task: Task, job: Job, index: int, image: Any, seed: int,
               infotext: str) -> ImageRecord:
    """What happens to each finished image: saved in the task's outputs folder when the request
    asks for it, announced on the job (``image`` event), returned as its record. The Ray
    backend's front does the same with each image a worker streams back."""
    path = save_image(image, outputs_dir, task.output_folder, infotext, seed) if request.save else None
    job.emit("image", index=index, seed=seed, path=str(path) if path else None)
    return ImageRecord(image=image, seed=seed, infotext=infotext, path=str(path) if path else None)


def _draw(context: "EaselContext", request: GenerationRequest, model: "LoadedModel", pipe: Any, job: Job,
          seeds: list[int], prompt_kwargs: dict[str, Any], prepared: Prepared, call_kwargs: dict[str, Any]) -> list:
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    call_kwargs = dict(call_kwargs)
    extension_callback = call_kwargs.pop("callback_on_step_end", None)
    common = dict(
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        generator=generators,
        num_images_per_prompt=request.batch_size,
        **prepared.arguments,
    )
    if request.refiner is None:
        output = pipe(
            **prompt_kwargs, **common, callback_on_step_end=_StepReporter(job, model.family, then=extension_callback),
            output_type="pil", **call_kwargs,
        )
        return list(output.images)
    switch_at = float(request.refiner.switch_at)
    latents = pipe(
        **prompt_kwargs, **common, denoising_end=switch_at,
        callback_on_step_end=_StepReporter(job, model.family, then=extension_callback), output_type="latent",
        **call_kwargs,
    ).images
    with context.pipelines.use(request.refiner.model) as refiner:
        if not refiner.spec.can_refine:
            raise RequestError(f"{request.refiner.model} is not an SDXL model and cannot refine")
        refiner_pipe = task_pipeline(refiner, "img2img")
        refiner_pipe.scheduler = make_scheduler(refiner.base_scheduler_config, request.sampler,
                                                request.schedule_type, refiner.family, seed=seeds[0])
        refiner_prompt = prompt_arguments(refiner_pipe, refiner.family, request.prompt, request.negative_prompt)
        base_steps = int(round(request.steps * switch_at))
        refiner_common = {key: value for key, value in common.items() if key not in ("width", "height")}
        output = refiner_pipe(
            **refiner_prompt, **refiner_common, image=latents, denoising_start=switch_at,
            callback_on_step_end=_StepReporter(job, refiner.family, step_offset=base_steps), output_type="pil",
        )
    return list(output.images)
