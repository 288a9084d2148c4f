"""Easel's own REST routes, ``/easel/v1``: jobs of any task, kept in SQLite, with their images.

* ``POST /easel/v1/jobs`` queues a job (``task`` + ``request`` + optional ``webhook``) and
  answers ``202`` with its id and queue position at once.
* ``GET /easel/v1/jobs`` lists the jobs, newest first; ``GET /easel/v1/jobs/{id}`` gives one
  job's status, queue position, progress, events so far, seeds, infotexts and image URLs;
  ``GET /easel/v1/jobs/{id}/images/{n}`` serves its ``n``-th PNG (only from the outputs folder).
* ``DELETE /easel/v1/jobs/{id}`` cancels a queued job or interrupts a running one.

The jobs are :mod:`webui.job_store`'s persisted jobs: they survive a restart (queued ones run
after it, finished ones stay listed with their images) and may call a webhook when they end.
Errors are ``fastapi.HTTPException`` answers with a message (``detail``): 404 for an unknown
job or image, 409 for cancelling a job that has ended, 422 for a bad field, 503 with
``Retry-After`` when the queue is full. Authentication is added by whoever mounts the router.

Extensions add their own routes under the same prefix with the ``register_api_routes`` hook.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webui.job_store import API_PREFIX, GENERATION_TASKS, JobRecord, image_url, public_events
from webui.jobs import (
    GenerationRequest,
    IMAGE_FIELDS,
    Job,
    RequestError,
)
from webui.queue import QueueFullError
from webui.rest.errors import ApiRoute

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
"""What ``Retry-After`` says when the queue is full."""
_DEFAULTS = GenerationRequest()


class RefinerFields(BaseModel):
    """SDXL refiner: which model, and at what fraction of the steps it takes over."""

    model: str
    switch_at: float = Field(0.8, gt=0.0, lt=1.0)


class GenerationFields(BaseModel):
    """What decides the images of a txt2img, img2img or inpaint job (Easel's ``GenerationRequest``).

    Images are base64 PNG (a ``data:image/png;base64,`` prefix is accepted). Unknown keys are
    ignored. Images are always saved to the outputs folder: that is where the job's images
    are served from.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    model: str = Field("", description="A listed model name; empty = the app's default model")
    steps: int = _DEFAULTS.steps
    cfg_scale: float = _DEFAULTS.cfg_scale
    width: int = _DEFAULTS.width
    height: int = _DEFAULTS.height
    seed: int = Field(_DEFAULTS.seed, description="-1 = a random seed; image i of the job gets seed + i")
    batch_count: int = _DEFAULTS.batch_count
    batch_size: int = _DEFAULTS.batch_size
    sampler: str = _DEFAULTS.sampler
    schedule_type: str = _DEFAULTS.schedule_type
    refiner: RefinerFields | None = None
    extras: dict[str, Any] = Field(default_factory=dict, description="Extension options, by their keys")
    init_image: str | None = Field(None, description="img2img / inpaint: the starting image, base64 PNG")
    mask: str | None = Field(None, description="inpaint: white = repaint, black = keep; base64 PNG")
    denoising_strength: float = _DEFAULTS.denoising_strength
    resize_mode: int = Field(_DEFAULTS.resize_mode, description="0 just resize, 1 crop and resize, 2 resize and fill")
    mask_blur: int = _DEFAULTS.mask_blur
    inpainting_fill: int = Field(_DEFAULTS.inpainting_fill,
                                 description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = _DEFAULTS.inpaint_full_res
    inpaint_full_res_padding: int = _DEFAULTS.inpaint_full_res_padding
    inpainting_mask_invert: bool = _DEFAULTS.inpainting_mask_invert


class JobSubmission(BaseModel):
    """A job to queue: its task, what it needs, and optionally a webhook."""

    task: str = Field(description="txt2img, img2img, inpaint, or a task an extension adds (background)")
    request: dict[str, Any] = Field(default_factory=dict, description=(
        "txt2img / img2img / inpaint: the fields of GenerationFields; an extension's task: its own fields "
        "(background: the fields of BackgroundFields)"))
    webhook: str | None = Field(None, description="http(s) URL that receives the job's final record (POST, JSON)")


class JobAccepted(BaseModel):
    id: str
    status: str
    position: int = Field(description="1 = runs next (counting the running job), 0 = running")
    url: str


class JobProgress(BaseModel):
    image: int = Field(description="index of the image being made")
    images: int
    step: int
    steps: int


class JobView(BaseModel):
    """A job: its state, and its results once it has ended."""

    id: str
    task: str
    status: str = Field(description="queued, running, finished, failed, interrupted or cancelled")
    position: int = Field(0, description="while queued: 1 = runs next; 0 otherwise")
    created: float = Field(description="seconds since the epoch")
    started: float | None = None
    ended: float | None = None
    error: str = ""
    seeds: list[int] = Field(default_factory=list)
    infotexts: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list, description="URLs of the saved images (PNG)")
    progress: JobProgress | None = None
    events: list[dict[str, Any]] = Field(default_factory=list,
                                         description="events from number `since` on (not in lists)")
    message: str = ""


class JobList(BaseModel):
    jobs: list[JobView]


class JobCancelled(BaseModel):
    id: str
    status: str = Field(description="cancelled (it never ran) or interrupting (it stops at its next step)")


def _decode_image_field(name: str, value: str | None) -> str | None:
    """Base64 (or a ``data:`` URL) checked to be an image; returns plain base64. Raises :class:`RequestError`."""
    if value is None or value == "":
        return None
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{name} is not valid base64") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            image.size  # noqa: B018
    except (UnidentifiedImageError, OSError):
        raise RequestError(f"{name} is not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise RequestError(f"{name} is too large: {exc}") from None
    return text


def _generation_payload(request: dict[str, Any]) -> dict[str, Any]:
    """A txt2img/img2img/inpaint request checked against :class:`GenerationFields`, images as plain base64."""
    try:
        payload = GenerationFields.model_validate(request).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                             for error in exc.errors())
        raise RequestError(f"the request is not valid: {problems}") from None
    for name in IMAGE_FIELDS:
        payload[name] = _decode_image_field(name, payload.get(name))
    return payload


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


def create_router(context) -> APIRouter:
    """The ``/easel/v1`` routes of the app ``context`` (an :class:`webui.context.EaselContext`).

    Extensions add theirs through the ``register_api_routes`` hook, called here.
    """
    router = APIRouter(prefix=API_PREFIX, tags=["easel"], route_class=ApiRoute)  # A1111-style error bodies
    recorder = context.job_recorder()

    def find(job_id: str) -> tuple[JobRecord, Job | None]:
        record = recorder.get(job_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"no job with id {job_id!r}")
        return record, recorder.live_job(job_id)

    def view(record: JobRecord, live: Job | None, since: int | None) -> JobView:
        status, position, progress, message = record.status, 0, None, ""
        if live is not None and not record.done and not live.done:
            snapshot = live.snapshot()
            status = "running" if snapshot["status"] == "running" else "queued"
            position = snapshot["position"] if status == "queued" else 0
            message = snapshot["message"]
            if status == "running" and snapshot["steps"]:
                progress = JobProgress(image=snapshot["image"], images=snapshot["images"], step=snapshot["step"],
                                       steps=snapshot["steps"])
        elif live is not None and not record.done:
            status = "running"  # it has just ended; the record is written a moment later
        events: list[dict[str, Any]] = []
        if since is not None:
            events = public_events(live.events(since) if live is not None else record.events[since:])
        return JobView(id=record.id, task=record.task, status=status, position=position, created=record.created,
                       started=record.started, ended=record.ended, error=record.error, seeds=record.seeds,
                       infotexts=record.infotexts,
                       images=[image_url(record.id, index) for index in range(len(record.images))],
                       progress=progress, events=events, message=message)

    @router.post("/jobs", status_code=202, response_model=JobAccepted, summary="Queue a job")
    def submit_job(submission: JobSubmission, response: Response) -> JobAccepted:
        """Queue a txt2img, img2img or inpaint job; answers at once with its id and queue position."""
        try:
            if submission.task in GENERATION_TASKS:
                payload = _generation_payload(submission.request)
            elif submission.task in recorder.extension_tasks():
                payload = submission.request
            else:
                raise RequestError(f"unknown task {submission.task!r}; one of {', '.join(recorder.task_names())}")
            job = recorder.submit(submission.task, payload, webhook=submission.webhook)
        except ValueError as exc:  # RequestError, or what an extension task's check raised
            raise _unprocessable(str(exc)) from None
        except QueueFullError as exc:
            raise HTTPException(status_code=503, detail=str(exc),
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        url = f"{API_PREFIX}/jobs/{job.id}"
        response.headers["Location"] = url
        status = "running" if job.status == "running" else job.status if job.done else "queued"
        return JobAccepted(id=job.id, status=status, position=job.position, url=url)

    @router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
    def list_jobs(limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0)) -> JobList:
        """Jobs submitted through this API (also those from before a restart), newest first."""
        return JobList(jobs=[view(record, recorder.live_job(record.id), None)
                             for record in recorder.list(limit, offset)])

    @router.get("/jobs/{job_id}", response_model=JobView, summary="A job's status, events and results")
    def get_job(job_id: str, since: int = Query(0, ge=0, description="first event number to return")) -> JobView:
        """Status, queue position, progress, the events from number ``since`` on, seeds, infotexts, image URLs."""
        record, live = find(job_id)
        return view(record, live, since)

    @router.get("/jobs/{job_id}/images/{index}", response_class=FileResponse, summary="One image of a job (PNG)",
                responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such job or image"}})
    def get_job_image(job_id: str, index: int) -> FileResponse:
        """The ``index``-th saved image of the job (0 = first), from the outputs folder only."""
        record, _ = find(job_id)
        if not 0 <= index < len(record.images):
            raise HTTPException(status_code=404, detail=f"job {job_id} has {len(record.images)} image(s), "
                                                        f"no number {index}")
        outputs = Path(context.outputs_dir).resolve()
        path = (outputs / record.images[index]).resolve()
        if not path.is_relative_to(outputs) or not path.is_file():
            log.warning("Refused image %r of job %s: not a file inside the outputs folder", record.images[index],
                        job_id)
            raise HTTPException(status_code=404, detail="the image file is no longer in the outputs folder")
        return FileResponse(path, media_type="image/png")

    @router.delete("/jobs/{job_id}", response_model=JobCancelled, summary="Cancel or interrupt a job",
                   responses={409: {"description": "the job has already ended"}})
    def cancel_job(job_id: str) -> JobCancelled:
        """Cancel a queued job (it never runs) or interrupt a running one (what it finished is kept)."""
        record, live = find(job_id)
        if record.done or (live is not None and live.done):
            raise HTTPException(status_code=409, detail=f"job {job_id} has already ended ({record.status})")
        if live is None:  # recorded as waiting but unknown to this process's queue: it cannot run any more
            recorder.store.update(job_id, status="cancelled", ended=time.time(), error="Cancelled before it started")
            return JobCancelled(id=job_id, status="cancelled")
        outcome = recorder.cancel(live)
        return JobCancelled(id=job_id, status="cancelled" if outcome == "cancelled" else "interrupting")

    context.plugins.call("register_api_routes", router=router, context=context)
    return router


__all__ = ["create_router", "GenerationFields", "JobSubmission", "JobView", "GENERATION_TASKS"]
