"""AUTOMATIC1111 requests as Easel jobs, and Easel results as AUTOMATIC1111 answers.

:class:`A1111Jobs` turns a ``/sdapi/v1/txt2img`` or ``img2img`` body into a
:class:`webui.jobs.GenerationRequest` the way A1111 reads it (effective sampler
``sampler_name or sampler_index``, then "Euler"; "DPM++ 2M Karras"-style names; schedule
names in any case; ``override_settings.sd_model_checkpoint`` for this job only;
``save_images`` / ``do_not_save_samples``), refuses unknown models, samplers and LoRAs up
front (404 before anything is queued), and lists what Easel accepts but does not do
(``styles``, ``enable_hr``, ``restore_faces``, scripts, ...) so the answer's ``info`` can
say so. It also answers the model listing questions (titles "name [hash10]", the current
checkpoint). The routes live in :mod:`webui.rest.sdapi`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui import __version__
from webui.infotext import parse_infotext
from webui.jobs import GenerationRequest, GenerationResult, RefinerOptions, image_to_png
from webui.loras import list_lora_files, prompt_lora_names
from webui.outputs import encode_png
from webui.pipelines.hashing import short_hash
from webui.pipelines.schedulers import resolve_sampler
from webui.pipelines.sources import HUB_ID_PATTERN, ModelSource, UnknownModelError
from webui.rest.errors import NotFoundError
from webui.rest.limits import decode_image
from webui.rest.sdapi_models import Img2ImgRequest, Txt2ImgRequest, _ProcessingFields

if TYPE_CHECKING:
    from webui.context import EaselContext

DEFAULT_SAMPLER = "Euler"
#: A1111's "Just resize (latent upscale)" has no Easel counterpart; it is done as "Just resize".
LATENT_RESIZE_MODE = 3

# Fields Easel accepts but does not apply when they ask for something (value -> "asks for it").
_NOT_APPLIED_CHECKS: dict[str, Any] = {
    "styles": bool,
    "subseed_strength": lambda v: bool(v),
    "seed_resize_from_h": lambda v: v not in (-1, 0),
    "seed_resize_from_w": lambda v: v not in (-1, 0),
    "restore_faces": bool,
    "tiling": bool,
    "eta": lambda v: v is not None,
    "s_min_uncond": lambda v: v is not None,
    "s_churn": lambda v: v is not None,
    "s_tmax": lambda v: v is not None,
    "s_tmin": lambda v: v is not None,
    "s_noise": lambda v: v is not None,
    "firstpass_image": bool,
    "script_name": bool,
    "alwayson_scripts": bool,
    "enable_hr": bool,
    "hr_checkpoint_name": bool,
    "image_cfg_scale": lambda v: v is not None,
    "initial_noise_multiplier": lambda v: v is not None,
    "latent_mask": bool,
    "disable_extra_networks": bool,
}


@dataclass
class PreparedJob:
    """An A1111 body turned into an Easel request, with what Easel will not do for it."""

    request: GenerationRequest
    body: _ProcessingFields
    not_applied: list[str] = field(default_factory=list)
    init_images: list[str] = field(default_factory=list)


class A1111Jobs:
    """Reads A1111 bodies for one app (its models, LoRAs, current checkpoint) and writes A1111 answers."""

    def __init__(self, context: "EaselContext") -> None:
        self.context = context

    # --- models --------------------------------------------------------------------------

    def sha256_of(self, source: ModelSource) -> str | None:
        """The model's SHA-256 when it is already known (listing never hashes a file)."""
        cache = self.context.pipelines.hash_cache
        if cache is None or source.kind not in ("file", "folder"):
            return None
        path = Path(source.location)
        if source.kind == "folder":
            from webui.pipelines.hashing import denoiser_weights_file

            path = denoiser_weights_file(path)
            if path is None:
                return None
        return cache.cached(path)

    def title_of(self, source: ModelSource, sha256: str | None = None) -> str:
        """A1111's checkpoint title: ``name [hash10]``, or the name while the hash is not known.

        ``sha256``: the model's hash when the caller already looked it up."""
        digest = short_hash(sha256 or self.sha256_of(source))
        return f"{source.name} [{digest}]" if digest else source.name

    def model_items(self) -> list[dict[str, Any]]:
        """``GET /sdapi/v1/sd-models``."""
        items = []
        for source in self.context.list_models():
            digest = self.sha256_of(source)
            items.append({"title": self.title_of(source, digest), "model_name": source.name.rsplit(".", 1)[0]
                          if source.kind == "file" else source.name,
                          "hash": short_hash(digest), "sha256": digest, "filename": source.location,
                          "config": None})
        return items

    def resolve_model(self, wanted: str) -> str:
        """The model name for a title, name, file stem or hash; a hub id passes; else 404."""
        text = (wanted or "").strip()
        sources = self.context.list_models()
        bare = text.rsplit(" [", 1)[0] if text.endswith("]") else text
        for source in sources:
            stem = source.name.rsplit(".", 1)[0] if source.kind == "file" else source.name
            if text in (source.name, self.title_of(source)) or bare in (source.name, stem):
                return source.name
        lowered = bare.lower()
        if len(lowered) >= 8:
            for source in sources:
                digest = self.sha256_of(source)
                if digest and digest.startswith(lowered):
                    return source.name
        if HUB_ID_PATTERN.match(bare):
            return bare  # a hub repository id, loaded (and downloaded if allowed) on use
        raise UnknownModelError(f"Unknown model {wanted!r}; GET /sdapi/v1/sd-models lists the available ones")

    def current_model(self) -> str:
        return self.context.default_model

    def current_title(self) -> str:
        source = self.context.model_source(self.context.default_model)
        return self.title_of(source) if source is not None else self.context.default_model

    # --- requests ------------------------------------------------------------------------

    def _common(self, body: _ProcessingFields, task: str) -> tuple[GenerationRequest, list[str]]:
        not_applied = [name for name, asks in _NOT_APPLIED_CHECKS.items()
                       if name in type(body).model_fields and asks(getattr(body, name))]
        overrides = dict(body.override_settings or {})
        model = self.current_model()
        if overrides.get("sd_model_checkpoint"):
            model = self.resolve_model(str(overrides.pop("sd_model_checkpoint")))
        not_applied += [f"override_settings.{key}" for key in overrides]
        family = self.context.family_of(model) or "sd1"
        sampler_name = body.sampler_name or body.sampler_index or DEFAULT_SAMPLER
        sampler, schedule = resolve_sampler(sampler_name, body.scheduler or "Automatic", family)
        wanted = prompt_lora_names(body.prompt)
        available = list_lora_files(self.context.models_dir) if wanted else {}
        missing = [name for name in wanted if name not in available]
        if missing:
            raise NotFoundError(f"LoRA not found in {self.context.lora_dir}: {', '.join(missing)}; "
                                "GET /sdapi/v1/loras lists the available ones")
        refiner = None
        if body.refiner_checkpoint:
            refiner = RefinerOptions(model=self.resolve_model(body.refiner_checkpoint),
                                     switch_at=float(body.refiner_switch_at or 0.8))
        request = GenerationRequest(
            prompt=body.prompt or "", negative_prompt=body.negative_prompt or "", model=model,
            steps=int(body.steps), cfg_scale=float(body.cfg_scale), width=int(body.width), height=int(body.height),
            seed=int(body.seed), batch_count=int(body.n_iter), batch_size=int(body.batch_size),
            sampler=sampler, schedule_type=schedule, refiner=refiner,
            save=bool(body.save_images) and not bool(body.do_not_save_samples), task=task,
        )
        return request, not_applied

    def txt2img(self, body: Txt2ImgRequest) -> PreparedJob:
        """A txt2img body as an Easel request (raises 404/422-kind errors before anything is queued)."""
        request, not_applied = self._common(body, "txt2img")
        request.validate(self.context.max_side)
        return PreparedJob(request=request, body=body, not_applied=not_applied)

    def img2img(self, body: Img2ImgRequest) -> PreparedJob:
        """An img2img body (``mask`` makes it an inpaint job) as an Easel request."""
        from webui.jobs import RequestError

        if not body.init_images:
            raise RequestError("init_images: img2img needs at least one image (base64 PNG or a data: URL)")
        task = "inpaint" if body.mask else "img2img"
        request, not_applied = self._common(body, task)
        image = decode_image(body.init_images[0], max_side=self.context.max_side, field="init_images[0]")
        request.init_image = image_to_png(image)
        if len(body.init_images) > 1:
            not_applied.append("init_images[1:]")
        if body.mask:
            mask = decode_image(body.mask, max_side=self.context.max_side, field="mask")
            request.mask = image_to_png(mask)
        request.denoising_strength = float(body.denoising_strength)
        resize_mode = int(body.resize_mode)
        if resize_mode == LATENT_RESIZE_MODE:
            not_applied.append("resize_mode=3 (done as 0, Just resize)")
            resize_mode = 0
        request.resize_mode = resize_mode
        blur_x, blur_y = int(body.mask_blur_x), int(body.mask_blur_y)
        request.mask_blur = int(body.mask_blur) if body.mask_blur is not None else max(blur_x, blur_y)
        if body.mask_blur is None and blur_x != blur_y:
            not_applied.append("mask_blur_x != mask_blur_y (the larger is used)")
        request.inpainting_fill = int(body.inpainting_fill)
        request.inpaint_full_res = bool(body.inpaint_full_res)
        request.inpaint_full_res_padding = int(body.inpaint_full_res_padding)
        request.inpainting_mask_invert = bool(body.inpainting_mask_invert)
        request.validate(self.context.max_side)
        return PreparedJob(request=request, body=body, not_applied=not_applied)

    # --- answers -------------------------------------------------------------------------

    def answer(self, prepared: PreparedJob, result: GenerationResult, started: float) -> dict[str, Any]:
        """The ``{images, parameters, info}`` answer for a finished (or interrupted) job."""
        body, request = prepared.body, prepared.request
        images: list[str] = []
        if body.send_images:
            for record in result.images:
                data = (Path(record.path).read_bytes() if record.path
                        else encode_png(record.image, record.infotext))
                images.append(base64.b64encode(data).decode("ascii"))
            if isinstance(body, Img2ImgRequest) and body.include_init_images:
                images += list(body.init_images or [])
        parameters = body.model_dump()
        if isinstance(body, Img2ImgRequest) and not body.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        return {"images": images, "parameters": parameters,
                "info": json.dumps(self.info(prepared, result, started))}

    def info(self, prepared: PreparedJob, result: GenerationResult, started: float) -> dict[str, Any]:
        """A1111's ``info`` object (``Processed.js()``), plus what Easel did not apply."""
        request = prepared.request
        infotexts = [record.infotext for record in result.images]
        params = parse_infotext(infotexts[0])[2] if infotexts else {}
        seeds = result.seeds or [request.seed]
        count = len(result.images) or 1
        return {
            "prompt": request.prompt, "all_prompts": [request.prompt] * count,
            "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * count,
            "seed": seeds[0], "all_seeds": seeds, "subseed": seeds[0], "all_subseeds": seeds,
            "subseed_strength": 0, "width": request.width, "height": request.height,
            "sampler_name": request.sampler, "scheduler": request.schedule_type,
            "cfg_scale": request.cfg_scale, "steps": request.steps,
            "batch_size": request.batch_size, "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": params.get("Model", request.model), "sd_model_hash": params.get("Model hash"),
            "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": request.denoising_strength if request.task != "txt2img" else None,
            "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
            "job_timestamp": datetime.fromtimestamp(started).strftime("%Y%m%d%H%M%S"),
            "clip_skip": 1, "is_using_inpainting_conditioning": False,
            "version": f"Easel {__version__}",
            "interrupted": result.interrupted, "skipped": result.skipped,
            "not_applied": prepared.not_applied,
            "seconds": round(result.seconds, 3),
        }
