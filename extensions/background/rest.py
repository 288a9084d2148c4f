"""The Background tab's workflow as REST routes: detect, mask, and replacement as a job.

* ``POST /easel/v1/background/detect``: the boxes matching a subject prompt (as the tab's
  **Detect**).
* ``POST /easel/v1/background/mask``: the subject mask of chosen boxes, after the mask tools
  (as **Make mask**), as a base64 PNG (white = keep).
* Replacement is a job of Easel's job API: ``POST /easel/v1/jobs`` with ``task: "background"``
  and :class:`BackgroundFields` as its ``request`` (registered through ``register_job_tasks``);
  with a ``mask`` it uses it as it is, else it detects, segments and applies the mask tools
  first (the tab's one-click path). Its images are the result and the subject mask.

Written only against :mod:`webui.api`, as a third-party extension would be.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from fastapi import APIRouter, HTTPException
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webui.api import EaselError, GenerationResult, ImageRecord, Job, JobTask, RequestError, image_to_png

from . import engine, registry
from .masks import apply_mask_tools, image_to_mask, mask_to_image, prepare_image

TASK = "background"
MAX_DETECTIONS_BOXES = 64


def decode_image(name: str, value: str) -> Image.Image:
    """A base64 PNG/JPEG (a ``data:`` URL too) as a loaded PIL image; :class:`RequestError` when it is not one."""
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise RequestError(f"{name} is not a base64 image Pillow can read") from None
    return image


def encode_png(image: Image.Image) -> str:
    return base64.b64encode(image_to_png(image)).decode("ascii")


class DetectFields(BaseModel):
    """What to look for, in which image."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="base64 PNG or JPEG")
    subject_prompt: str = Field(description="what to keep, e.g. \"the dog\"")
    detector: str = Field(registry.TINY_DETECTOR, description="a detector name (see the Background tab's list)")
    box_threshold: float = Field(0.35, ge=0.0, le=1.0)
    text_threshold: float = Field(0.25, ge=0.0, le=1.0)
    work_side: int = Field(1024, ge=64, le=4096, description="long side the detector works at")


class DetectionOut(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in the image's pixels")
    score: float
    label: str


class DetectResult(BaseModel):
    width: int
    height: int
    detections: list[DetectionOut]
    message: str = ""


class MaskFields(BaseModel):
    """Which boxes to segment, and the mask tools to apply."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="base64 PNG or JPEG")
    boxes: list[list[float]] = Field(default_factory=list, max_length=MAX_DETECTIONS_BOXES,
                                     description="x0, y0, x1, y1 boxes (from detect) of the subject")
    segmenter: str = Field(registry.GRABCUT, description="a segmenter name (see the Background tab's list)")
    grow: int = Field(0, ge=-64, le=64, description="grow (+) or shrink (-) the mask by this many pixels")
    keep_largest: bool = True
    fill_holes: bool = False
    invert: bool = False
    use_alpha: bool = Field(True, description="use the image's transparency as a hint (alone when no box is given)")
    work_side: int = Field(1024, ge=64, le=4096)


class MaskResult(BaseModel):
    mask: str = Field(description="base64 PNG, white = keep (the subject), black = replace")
    coverage: float = Field(description="fraction of the image the subject covers")


class BackgroundFields(BaseModel):
    """The ``request`` of a ``background`` job: the image, what to keep, what to paint around it."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="base64 PNG or JPEG")
    mask: str | None = Field(None, description="base64 PNG, white = keep; when absent the subject is detected")
    subject_prompt: str = ""
    detector: str = registry.TINY_DETECTOR
    segmenter: str = registry.GRABCUT
    box_threshold: float = Field(0.35, ge=0.0, le=1.0)
    text_threshold: float = Field(0.25, ge=0.0, le=1.0)
    keep: list[int] | None = Field(None, description="indices of the detections to keep; all when absent")
    grow: int = Field(0, ge=-64, le=64)
    keep_largest: bool = True
    fill_holes: bool = False
    invert: bool = False
    use_alpha: bool = True
    background_prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    strength: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = -1
    erode: int = Field(2, ge=0, le=32)
    feather: int = Field(4, ge=0, le=32)
    decontaminate: float = Field(0.5, ge=0.0, le=1.0)
    work_side: int = Field(1024, ge=64, le=4096)


def _unprocessable(exc: Exception) -> HTTPException:
    return HTTPException(status_code=422, detail=str(exc))


def register_routes(router: APIRouter, context: Any) -> None:
    """``/background/detect`` and ``/background/mask`` on ``router`` (the app's ``/easel/v1`` router)."""

    @router.post("/background/detect", response_model=DetectResult, tags=["background"],
                 summary="Find the subject: boxes for a text prompt")
    def detect(fields: DetectFields) -> DetectResult:
        """The boxes matching ``subject_prompt``, best first, in the image's pixel coordinates."""
        try:
            prepared = prepare_image(decode_image("image", fields.image))
            found = engine.detect_subject(context, prepared.image, fields.subject_prompt, fields.detector,
                                          fields.box_threshold, fields.text_threshold, fields.work_side)
        except (EaselError, ValueError) as exc:
            raise _unprocessable(exc) from None
        message = "" if found else engine.no_detection_message(fields.subject_prompt, fields.box_threshold,
                                                               fields.text_threshold)
        return DetectResult(width=prepared.size[0], height=prepared.size[1], message=message,
                            detections=[DetectionOut(box=list(item.box), score=item.score, label=item.label)
                                        for item in found])

    @router.post("/background/mask", response_model=MaskResult, tags=["background"],
                 summary="The subject mask of chosen boxes, after the mask tools")
    def make_mask(fields: MaskFields) -> MaskResult:
        """Segment the subject inside ``boxes`` (or take the image's transparency) and apply the mask tools."""
        try:
            prepared = prepare_image(decode_image("image", fields.image))
            boxes = [tuple(float(v) for v in box) for box in fields.boxes]
            if any(len(box) != 4 for box in boxes):
                raise RequestError("every box is four numbers: x0, y0, x1, y1")
            if boxes:
                mask = engine.segment_subject(context, prepared.image, boxes, fields.segmenter, fields.work_side)
                if fields.use_alpha and prepared.alpha_hint is not None:
                    mask &= prepared.alpha_hint
            elif fields.use_alpha and prepared.alpha_hint is not None:
                mask = prepared.alpha_hint
            else:
                raise RequestError("give at least one box (from /background/detect), or an image with transparency")
        except (EaselError, ValueError) as exc:
            raise _unprocessable(exc) from None
        mask = apply_mask_tools(mask, fields.grow, fields.keep_largest, fields.fill_holes, fields.invert)
        return MaskResult(mask=encode_png(mask_to_image(mask)), coverage=float(mask.mean()))


def _check_background_request(payload: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``background`` job's request (:class:`BackgroundFields`); its images must decode."""
    try:
        fields = BackgroundFields.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise RequestError(f"the background request is not valid: {problems}") from None
    image = decode_image("image", fields.image)
    if fields.mask is not None:
        mask = decode_image("mask", fields.mask)
        if mask.size != image.size:
            raise RequestError(f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}")
    elif not fields.subject_prompt.strip() and "A" not in image.getbands():
        raise RequestError("say what to keep (subject_prompt), or send a mask or an image with transparency")
    return fields.model_dump()


def _run_background_job(context: Any, payload: dict[str, Any], job: Job) -> GenerationResult:
    """Run one ``background`` job (on its own thread; the inpainting waits in the queue as ``job``)."""
    fields = BackgroundFields.model_validate(payload)
    options = engine.ReplaceOptions(
        background_prompt=fields.background_prompt, negative_prompt=fields.negative_prompt, model=fields.model,
        sampler=fields.sampler, schedule_type=fields.schedule_type, steps=fields.steps, cfg_scale=fields.cfg_scale,
        strength=fields.strength, seed=fields.seed, erode=fields.erode, feather=fields.feather,
        decontaminate=fields.decontaminate, work_side=fields.work_side, save=True)
    image = decode_image("image", fields.image)
    if fields.mask is not None:
        prepared = prepare_image(image)
        mask = apply_mask_tools(image_to_mask(decode_image("mask", fields.mask).convert("L")), fields.grow,
                                fields.keep_largest, fields.fill_holes, fields.invert)
        options.extra_infotext = {"Subject prompt": fields.subject_prompt or None, "Mask": "given"}
        result = engine.replace_background(context, prepared.image, mask, options, job)
    else:
        outcome = engine.run_background_job(context, engine.BackgroundJob(
            image=image, subject_prompt=fields.subject_prompt, detector=fields.detector, segmenter=fields.segmenter,
            box_threshold=fields.box_threshold, text_threshold=fields.text_threshold, keep=fields.keep,
            grow=fields.grow, keep_largest=fields.keep_largest, fill_holes=fields.fill_holes, invert=fields.invert,
            use_alpha=fields.use_alpha, options=options), job)
        if outcome.result is None:
            raise RequestError(outcome.message)
        result = outcome.result
    return GenerationResult(
        images=[ImageRecord(image=result.image, seed=result.seed, infotext=result.infotext, path=result.path),
                ImageRecord(image=mask_to_image(result.mask), seed=result.seed, infotext=result.infotext,
                            path=result.mask_path)],
        interrupted=job.interrupted, seconds=result.seconds)


def background_job_task() -> JobTask:
    """The ``background`` task of the job API."""
    return JobTask(name=TASK, check=_check_background_request, run=_run_background_job)


__all__ = ["background_job_task", "BackgroundFields", "register_routes", "decode_image"]
