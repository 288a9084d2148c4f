"""AUTOMATIC1111's REST API (``/sdapi/v1``), served by Easel through its one job queue.

Same routes, field names, defaults and answer shapes as A1111 1.10, so clients written
for it (chat front ends, bots, editor plugins, the ``webuiapi`` package) work unchanged.
Image jobs go through :meth:`webui.context.EaselContext.submit` like the UI's; while one
runs, ``progress`` answers at once (the handlers never wait on the device).
What Easel does not do is accepted and said in the answer's ``info`` (``not_applied``),
and listings show only what exists (no scripts, upscalers or face restorers).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Query
from starlette.concurrency import run_in_threadpool

from webui.infotext import parse_infotext
from webui.jobs import RequestError
from webui.loras import list_lora_files, safetensors_metadata
from webui.outputs import INFOTEXT_KEY, encode_png, read_image_text
from webui.pipelines.schedulers import SAMPLERS, SCHEDULE_TYPES, sampler_aliases
from webui.queue import JobCancelledError
from webui.rest.a1111_jobs import A1111Jobs, PreparedJob
from webui.rest.errors import ApiRoute
from webui.rest.limits import decode_image
from webui.rest.sdapi_models import (
    EmbeddingsResponse,
    ImageResponse,
    Img2ImgRequest,
    LoraItem,
    MemoryResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    Txt2ImgRequest,
)

if TYPE_CHECKING:
    from webui.context import EaselContext

JOB_POLL_SECONDS = 0.02
#: Options A1111 clients read (and post back) that have a fixed meaning in Easel.
FIXED_OPTIONS = {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "samples_format": "png",
                 "sd_lora": "None", "show_progress_every_n_steps": 2}


def create_router(context: "EaselContext", cmd_flags: dict[str, Any] | None = None) -> APIRouter:
    """The ``/sdapi/v1`` routes of one app (authentication is added by the caller as a dependency)."""
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"], route_class=ApiRoute)
    jobs = A1111Jobs(context)
    flags = dict(cmd_flags or {})

    async def run_job(prepared: PreparedJob) -> dict[str, Any]:
        started = time.time()
        job = context.submit(prepared.request)  # QueueFullError -> 503
        while not job.done:
            await asyncio.sleep(JOB_POLL_SECONDS)
        try:
            result = context.job_queue().wait(job)
        except JobCancelledError:
            from webui.jobs import GenerationResult

            result = GenerationResult(interrupted=True)
        return await run_in_threadpool(jobs.answer, prepared, result, started)

    @router.post("/txt2img", response_model=ImageResponse)
    async def txt2img(body: Txt2ImgRequest) -> dict[str, Any]:
        """Generate images from a prompt (waits for the job; ``progress`` answers meanwhile)."""
        # read and queued without yielding to other requests: jobs queue in the order they arrived
        return await run_job(jobs.txt2img(body))

    @router.post("/img2img", response_model=ImageResponse)
    async def img2img(body: Img2ImgRequest) -> dict[str, Any]:
        """Repaint ``init_images[0]`` (with ``mask``: inpaint the white part)."""
        prepared = await run_in_threadpool(jobs.img2img, body)
        return await run_job(prepared)

    @router.get("/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = Query(False)) -> dict[str, Any]:
        """How far the running job is; answers at once."""
        queue = context.job_queue()
        snapshot = queue.snapshot()
        job = queue.get(snapshot["running"]) if snapshot["running"] else None
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0, "queued": len(snapshot["waiting"])}
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        snap = job.snapshot()
        images = max(int(snap["images"]), 1)
        steps = max(int(snap["steps"]), 1)
        fraction = min(1.0, (int(snap["image"]) + int(snap["step"]) / steps) / images)
        elapsed = float(snap["elapsed"])
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        state.update({"skipped": job.skip_requested, "interrupted": job.interrupted, "job": job.id,
                      "job_count": images, "job_no": int(snap["image"]), "sampling_step": int(snap["step"]),
                      "sampling_steps": int(snap["steps"]),
                      "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - elapsed))})
        current = None
        if not skip_current_image and snap["preview"] is not None:
            current = base64.b64encode(encode_png(snap["preview"])).decode("ascii")
        return {"progress": round(fraction, 4), "eta_relative": round(eta, 3), "state": state,
                "current_image": current, "textinfo": job.progress_text()}

    @router.post("/interrupt")
    async def interrupt() -> None:
        """Stop the running job at its next step (what it finished is kept and answered)."""
        running = _running_job(context)
        if running is not None:
            running.interrupt()

    @router.post("/skip")
    async def skip() -> None:
        """Stop the running job's current image and go on with its next one."""
        running = _running_job(context)
        if running is not None:
            running.skip()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        """A flat dict: ``sd_model_checkpoint`` (the current model's title) and Easel's settings."""
        options: dict[str, Any] = dict(FIXED_OPTIONS)
        source = context.model_source(context.default_model)
        options["sd_model_checkpoint"] = jobs.current_title()
        options["sd_checkpoint_hash"] = jobs.sha256_of(source) if source is not None else None
        options["outdir_samples"] = str(context.outputs_dir)
        for spec in context.settings.specs:
            options[spec.key] = context.settings.get(spec.key)
        return options

    @router.post("/options")
    def set_options(values: dict[str, Any] = Body(...)) -> None:
        """Change options; the whole dict from GET may be posted back (unchanged values are no-ops)."""
        known = {spec.key for spec in context.settings.specs}
        model = values.get("sd_model_checkpoint")
        name = jobs.resolve_model(str(model)) if model else None  # 404 before anything changes
        for key, value in values.items():
            if key in known and value != context.settings.get(key):
                try:
                    context.settings.set(key, value)
                except (TypeError, ValueError) as exc:
                    raise RequestError(f"option {key}: {exc}") from None
        if name is not None:
            context.default_model = name

    @router.get("/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        """The command-line flags this server runs with (credentials hidden)."""
        return flags

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[dict[str, Any]]:
        """Every model a job can use; ``title`` is "name [hash10]" once the hash is known."""
        return jobs.model_items()

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        """Models are listed from the folder on every call; nothing to refresh."""

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        return [{"name": name, "aliases": sampler_aliases(name), "options": {}} for name in SAMPLERS]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[dict[str, Any]]:
        return [{"name": name.lower().replace(" ", "_"), "label": name, "aliases": None, "default_rho": None,
                 "need_inner_model": None} for name in SCHEDULE_TYPES]

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> list[dict[str, Any]]:
        """LoRA files under ``models/Lora`` (use them with ``<lora:name:weight>``)."""
        return [{"name": name, "alias": name, "path": str(path), "metadata": safetensors_metadata(path)}
                for name, path in list_lora_files(context.models_dir).items()]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        """LoRAs are listed from the folder on every call; nothing to refresh."""

    @router.get("/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        """Easel uses each model's own VAE; there are no separate VAE files to pick."""
        return []

    @router.get("/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        return []

    @router.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return []

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> dict[str, Any]:
        return {"loaded": {}, "skipped": {}}

    @router.get("/prompt-styles")
    def prompt_styles() -> list[dict[str, Any]]:
        return []

    @router.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return []

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> dict[str, Any]:
        """No A1111 scripts run here: clients must not send ``alwayson_scripts`` for any."""
        return {"txt2img": [], "img2img": []}

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return []

    @router.get("/memory", response_model=MemoryResponse)
    def memory() -> dict[str, Any]:
        return {"ram": _ram(), "cuda": _cuda()}

    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(body: PNGInfoRequest) -> dict[str, Any]:
        """The ``parameters`` text of an image, its other text chunks, and the parameters parsed."""
        image = decode_image(body.image, max_side=context.max_side, upright=False)
        texts = read_image_text(image)
        info = texts.pop(INFOTEXT_KEY, "") or ""
        parameters: dict[str, Any] = {}
        if info:
            prompt, negative, params = parse_infotext(info)
            parameters = {"Prompt": prompt, "Negative prompt": negative, **params}
            width, _, height = str(params.get("Size", "")).partition("x")
            if width.isdigit() and height.isdigit():
                parameters["Size-1"], parameters["Size-2"] = width, height
        return {"info": info, "items": texts, "parameters": parameters}

    return router


def _running_job(context: "EaselContext"):
    queue = context.job_queue()
    running = queue.snapshot()["running"]
    return queue.get(running) if running else None


def _ram() -> dict[str, Any]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        free = page * os.sysconf("SC_AVPHYS_PAGES")
        return {"free": free, "used": total - free, "total": total}
    except (ValueError, OSError, AttributeError):
        return {"error": "unknown on this system"}


def _cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    return {"system": {"free": free, "used": total - free, "total": total},
            "active": {"current": stats.get("active_bytes.all.current", 0),
                       "peak": stats.get("active_bytes.all.peak", 0)},
            "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                          "peak": stats.get("allocated_bytes.all.peak", 0)}}
