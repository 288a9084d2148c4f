"""The background-replacement workflow: detect -> segment -> mask tools -> inpaint -> composite.

The inpainting is an ``inpaint`` job of Easel's one generation path (``context.generate``):
this module has no generation loop of its own.

Every stage that uses the accelerator holds the device lock of the shared pipeline manager;
the detector and the segmenter go back to the CPU as soon as their step is done, before the
inpainting model is used. Large inputs are worked on at most ``work_side`` pixels on the
long side; the result is composited at the input's own size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.api import (
    GenerationError,
    GenerationRequest,
    Job,
    RequestError,
    family_spec,
    image_to_png,
    resolve_seed,
    save_image,
)

from . import registry
from .composite import blend_alpha, composite_subject
from .detect import Detection
from .masks import PreparedImage, apply_mask_tools, mask_to_image, prepare_image, to_model_size

log = logging.getLogger(__name__)

OUTPUT_TASK = "img2img-bg"
MASK_TASK = "img2img-bg-masks"
NO_DETECTION = ("Nothing matching {prompt!r} was found (box threshold {box:.2f}, text threshold {text:.2f}). "
                "Try lower thresholds (e.g. box {box_hint:.2f}, text {text_hint:.2f}), a simpler subject prompt "
                "(one or two words such as \"dog\"), or draw the mask by hand in the editor.")

STATE_KEY = "background"


@dataclass
class BackgroundState:
    """The Background tab's per-app state, kept in ``context.extension_state["background"]``.

    Two apps in one process (tests, several servers) each keep their own models, and nothing
    lives in a module global, so importing this module twice (tests do) changes nothing.
    """

    models: registry.ModelCache = field(default_factory=registry.ModelCache)
    """The last detector and the last segmenter loaded (on the CPU between jobs)."""


def background_state(context) -> BackgroundState:
    """This app's :class:`BackgroundState` (made on first use)."""
    return context.extension_state.setdefault(STATE_KEY, BackgroundState())


def model_cache(context) -> registry.ModelCache:
    """This app's detector/segmenter cache."""
    return background_state(context).models


@dataclass
class ReplaceOptions:
    """What the inpainting and the composite use."""

    background_prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    strength: float = 1.0
    seed: int = -1
    erode: int = 2
    feather: int = 4
    decontaminate: float = 0.5
    work_side: int = 1024
    save: bool = True
    extra_infotext: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # request.extras for the extension hooks


@dataclass
class ReplaceResult:
    image: Image.Image
    mask: np.ndarray
    seed: int
    infotext: str
    path: str | None = None
    mask_path: str | None = None
    generated: Image.Image | None = None
    seconds: float = 0.0


def _device(context) -> torch.device:
    return context.device


def detect_subject(context, image: Image.Image, prompt: str, detector: str, box_threshold: float = 0.35,
                   text_threshold: float = 0.25, work_side: int = 1024) -> list[Detection]:
    """Boxes for ``prompt`` in ``image`` (an RGB image from :func:`prepare_image`), in its pixel coordinates."""
    if not (prompt or "").strip():
        raise RequestError("Type what to keep (the subject prompt), e.g. \"the dog\"")
    model = model_cache(context).detector(context.models_dir, detector)
    work = to_model_size(image, work_side, multiple=1)
    with context.device_lock():
        try:
            model.to(_device(context))
            found = model.detect(work, prompt, box_threshold=box_threshold, text_threshold=text_threshold)
        finally:
            model.to("cpu")
    factor_x, factor_y = image.width / work.width, image.height / work.height
    return [item.scaled(factor_x, factor_y) for item in found]


def no_detection_message(prompt: str, box_threshold: float, text_threshold: float) -> str:
    return NO_DETECTION.format(prompt=prompt, box=box_threshold, text=text_threshold,
                               box_hint=max(0.05, round(box_threshold * 0.6, 2)),
                               text_hint=max(0.05, round(text_threshold * 0.6, 2)))


def segment_subject(context, image: Image.Image, boxes: list[tuple[float, float, float, float]], segmenter: str,
                    work_side: int = 1024) -> np.ndarray:
    """The subject mask (input size) of the chosen boxes."""
    if not boxes:
        raise RequestError("No box is selected: pick at least one detection to keep")
    model = model_cache(context).segmenter(context.models_dir, segmenter)
    work = to_model_size(image, work_side, multiple=1)
    factor_x, factor_y = work.width / image.width, work.height / image.height
    scaled = [(x0 * factor_x, y0 * factor_y, x1 * factor_x, y1 * factor_y) for x0, y0, x1, y1 in boxes]
    with context.device_lock():
        try:
            model.to(_device(context))
            mask = model.segment(work, scaled)
        finally:
            model.to("cpu")
    if work.size != image.size:
        mask = np.asarray(mask_to_image(mask).resize(image.size, Image.Resampling.BILINEAR)) >= 128
    return mask


# ------------------------------------------------------------------------------------------
# Inpainting: an ``inpaint`` job on the queue, then the subject pasted back
# ------------------------------------------------------------------------------------------


def replace_background(context, image: Image.Image, mask: np.ndarray, options: ReplaceOptions,
                       job: Job | None = None) -> ReplaceResult:
    """Inpaint everything outside ``mask`` (True = subject, input size) and paste the subject back.

    The repaint is an ``inpaint`` job of Easel's one generation path (it waits in the queue
    like any other job, with the extension hooks, seeds, out-of-memory handling of every
    job) at the working size; this function only prepares its image and mask and
    composites the result.
    """
    job = job or Job()
    started = time.monotonic()
    image = image.convert("RGB")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise RequestError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    if not mask.any():
        raise RequestError("The subject mask is empty: detect the subject again, lower the thresholds or draw it")
    if mask.all():
        raise RequestError("The subject mask covers the whole image: there is no background to replace")
    if job.interrupted:
        raise RequestError("Interrupted before the background was painted")
    model_name = options.model or context.default_model
    seed = resolve_seed(int(options.seed))
    _, core = blend_alpha(mask, options.erode, options.feather)
    repaint = ~core if core.any() else ~mask
    family = context.family_of(model_name)
    multiple = family_spec(family).latent_multiple if family else 8
    work = to_model_size(image, options.work_side, multiple=multiple)
    work_mask = mask_to_image(repaint).resize(work.size, Image.Resampling.BILINEAR)
    request = inpaint_request(options, model_name, seed, image.size, work, work_mask)
    try:
        outcome = context.generate(request, job)
    except torch.OutOfMemoryError as exc:  # the core turns it into a GenerationError; kept for clarity
        raise GenerationError(f"Out of memory inpainting at {work.width}x{work.height}: lower the working size or "
                              "use a lower-memory profile. The server is still running.") from exc
    if not outcome.images:
        raise RequestError("Interrupted before the background was painted")
    generated = outcome.images[0].image
    infotext = outcome.images[0].infotext
    result_image = composite_subject(image, generated, mask, options.erode, options.feather, options.decontaminate)
    result = ReplaceResult(image=result_image, mask=mask, seed=seed, infotext=infotext, generated=generated)
    if options.save:
        result.path = str(save_image(result_image, context.outputs_dir, OUTPUT_TASK, infotext, seed))
        result.mask_path = str(save_image(mask_to_image(mask), context.outputs_dir, MASK_TASK, infotext, seed))
    result.seconds = time.monotonic() - started
    return result


def inpaint_request(options: ReplaceOptions, model_name: str, seed: int, input_size: tuple[int, int],
                    work: Image.Image, work_mask: Image.Image) -> GenerationRequest:
    """The ``inpaint`` job that repaints the background at the working size.

    ``width``/``height`` are the size the pipeline works (and the VAE decodes) at; the
    Background tab's own values are in ``extras`` under ``background.`` (see
    :mod:`webui.hookspecs`) and its infotext fields in ``infotext_extra`` (``Size`` is the
    input's, ``Mask blur`` the subject mask's feather).
    """
    return GenerationRequest(
        task="inpaint", prompt=options.background_prompt or "", negative_prompt=options.negative_prompt or "",
        model=model_name, steps=int(options.steps), cfg_scale=float(options.cfg_scale), width=int(work.width),
        height=int(work.height), seed=seed, sampler=options.sampler, schedule_type=options.schedule_type,
        save=False, init_image=image_to_png(work), mask=image_to_png(work_mask),
        denoising_strength=float(options.strength), mask_blur=0, inpainting_fill=1,
        infotext_extra=_infotext_fields(options, input_size, work.size),
        extras={**options.extras, "background.task": "inpaint", "background.strength": float(options.strength),
                "background.input_size": (int(input_size[0]), int(input_size[1]))},
    )


def _infotext_fields(options: ReplaceOptions, size: tuple[int, int], work_size: tuple[int, int]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Size": f"{size[0]}x{size[1]}",
        "Inpaint size": f"{work_size[0]}x{work_size[1]}" if work_size != size else None,
        "Mask erode": int(options.erode),
        "Mask blur": int(options.feather),
        "Edge decontamination": float(options.decontaminate) or None,
        # the background's repaint is whole-picture inpainting of the unmasked area: say only what it adds
        "Masked content": None, "Inpaint area": None, "Mask mode": None,
    }
    params.update(options.extra_infotext)
    return params


# ------------------------------------------------------------------------------------------
# Everything in one call (REST/tests)
# ------------------------------------------------------------------------------------------


@dataclass
class BackgroundJob:
    """One end-to-end request: an uploaded image, what to keep, what to paint around it."""

    image: Image.Image
    subject_prompt: str
    detector: str = registry.TINY_DETECTOR
    segmenter: str = registry.GRABCUT
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    keep: list[int] | None = None  # indices of detections to keep; None = all
    grow: int = 0
    keep_largest: bool = True
    fill_holes: bool = False
    invert: bool = False
    use_alpha: bool = True
    options: ReplaceOptions = field(default_factory=ReplaceOptions)


@dataclass
class BackgroundOutcome:
    prepared: PreparedImage
    detections: list[Detection]
    result: ReplaceResult | None = None
    message: str = ""


def run_background_job(context, request: BackgroundJob, job: Job | None = None) -> BackgroundOutcome:
    """Detect, segment, apply the mask tools, inpaint and composite.

    When nothing is detected the outcome carries a message and no result (or, for an input
    with transparency and ``use_alpha``, its alpha is used as the mask).
    """
    prepared = prepare_image(request.image)
    detections: list[Detection] = []
    mask = None
    if (request.subject_prompt or "").strip():
        detections = detect_subject(context, prepared.image, request.subject_prompt, request.detector,
                                    request.box_threshold, request.text_threshold, request.options.work_side)
    chosen = detections if request.keep is None else [detections[i] for i in request.keep if 0 <= i < len(detections)]
    if chosen:
        mask = segment_subject(context, prepared.image, [d.box for d in chosen], request.segmenter,
                               request.options.work_side)
        if request.use_alpha and prepared.alpha_hint is not None:
            mask &= prepared.alpha_hint
    elif request.use_alpha and prepared.alpha_hint is not None:
        mask = prepared.alpha_hint
    if mask is None:
        return BackgroundOutcome(prepared, detections, None, no_detection_message(
            request.subject_prompt, request.box_threshold, request.text_threshold))
    mask = apply_mask_tools(mask, request.grow, request.keep_largest, request.fill_holes, request.invert)
    options = request.options
    options.extra_infotext = {**options.extra_infotext, "Subject prompt": request.subject_prompt or None,
                              "Detector": request.detector if detections else None,
                              "Segmenter": request.segmenter if chosen else None}
    result = replace_background(context, prepared.image, mask, options, job)
    return BackgroundOutcome(prepared, detections, result, "; ".join(prepared.notes))
