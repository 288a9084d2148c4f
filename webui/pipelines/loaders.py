"""One loader per model family, on diffusers' own ``from_pretrained`` / ``from_single_file``.

Loading always happens on the CPU; the manager moves the pipeline to the device after the
``configure_pipeline`` hooks ran (offload extensions need the pipeline on the CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from webui.errors import EaselError
from webui.pipelines.families import (
    UnsupportedModelError,
    detect_file_family,
    family_from_model_index,
    family_spec,
    is_inpainting_checkpoint,
)
from webui.pipelines.sources import ModelSource, hub_offline, sidecar_config

log = logging.getLogger(__name__)


class ModelLoadError(EaselError):
    """A model could not be loaded; the message says why and what to do."""


def inpaint_checkpoint_class(family: str):
    """The diffusers class a dedicated (9-channel) inpainting single-file checkpoint of ``family`` loads with."""
    import diffusers

    name = family_spec(family).inpaint_checkpoint
    if name is None:
        raise UnsupportedModelError(f"no inpainting checkpoint layout is known for {family} models")
    return getattr(diffusers, name)


def _sd_extra_kwargs(family: str) -> dict:
    # Easel does not run the SD1/SD2 safety checker, like AUTOMATIC1111.
    if family_spec(family).safety_checker:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def detect_family(source: ModelSource) -> str:
    """The family of a source, detected from its files when not known up front."""
    if source.family:
        return source.family
    if source.kind == "folder":
        return family_from_model_index(Path(source.location))
    if source.kind == "file":
        return detect_file_family(Path(source.location))
    if source.kind == "hub":
        from huggingface_hub import hf_hub_download

        try:
            index_file = hf_hub_download(source.location, "model_index.json")
        except Exception as exc:
            raise _hub_error(source, exc) from exc
        return family_from_model_index(Path(index_file).parent)
    raise UnsupportedModelError(f"cannot detect the family of {source.name}")


def _hub_error(source: ModelSource, exc: Exception) -> ModelLoadError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"{source.name} is gated: accept its licence on the hub page with your account, then start Easel with "
            "the HF_TOKEN environment variable set to a token of that account."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(f"{source.name} does not exist on the hub (or is private: set HF_TOKEN).")
    return ModelLoadError(
        f"Could not get {source.name} from the hub ({type(exc).__name__}: {exc}). Without network, only models "
        "already in the hub cache, files in models/Stable-diffusion and the built-in tiny models can be used."
    )


def load_pipeline(source: ModelSource, family: str, dtype: torch.dtype):
    """Load ``source`` as a pipeline of ``family`` on the CPU, in ``dtype``."""
    import diffusers

    cls = getattr(diffusers, family_spec(family).load_class_name)
    if source.kind == "builtin":
        from webui.pipelines.tiny import build_tiny_pipeline

        return build_tiny_pipeline(source.location, torch_dtype=dtype)
    extra = _sd_extra_kwargs(family)
    if source.kind == "folder":
        try:
            return cls.from_pretrained(source.location, dtype=dtype, local_files_only=True, **extra)
        except Exception as exc:
            raise ModelLoadError(f"Could not load the diffusers folder {source.name}: {exc}") from exc
    if source.kind == "file":
        if is_inpainting_checkpoint(Path(source.location)):
            # A dedicated inpainting checkpoint: its 9-channel UNet needs the inpainting
            # pipeline (txt2img refuses such a model after loading, with a message).
            cls = inpaint_checkpoint_class(family)
        config = sidecar_config(source)
        kwargs = dict(dtype=dtype, **extra)
        if config is not None:
            kwargs["config"] = str(config)
            kwargs["local_files_only"] = True
        elif hub_offline():
            kwargs["local_files_only"] = True
        try:
            return cls.from_single_file(source.location, **kwargs)
        except Exception as exc:
            hint = (
                "" if config is not None else
                f" Loading a single file needs the family's configs from the hub (cached after the first load) "
                f"or a diffusers config folder beside it named {Path(source.location).stem}.config/."
            )
            raise ModelLoadError(f"Could not load {source.name}: {exc}.{hint}") from exc
    if source.kind == "hub":
        try:
            return cls.from_pretrained(source.location, dtype=dtype, **extra)
        except Exception as exc:
            raise _hub_error(source, exc) from exc
    raise ModelLoadError(f"unknown model source kind {source.kind!r}")
