"""Quantization of the UNet/transformer and, optionally, the text encoders (T5 of SD3.5 above all).

Methods:

* ``quanto-int8``: int8 weights with optimum-quanto (``quantize`` + ``freeze``: Linear and
  Conv layers become ``QLinear``/``QConv2d``); works on the CPU and on CUDA, on any loaded
  pipeline (hub, folder, single file, built-in).
* ``bnb-nf4`` / ``bnb-int8``: bitsandbytes 4-bit NF4 / LLM.int8 through diffusers'
  ``PipelineQuantizationConfig``. bitsandbytes quantizes while loading, so the UNet or
  transformer (and text encoders) are re-loaded from the model's diffusers folder or hub
  repository with the per-component config it resolves. CUDA only.
* ``fp8-storage``: layerwise casting (``enable_layerwise_casting``): weights stored in
  float8 e4m3, each layer up-cast to the compute dtype just before it runs. Halves (fp16)
  or quarters (fp32) the weight memory; normalisation and embedding layers stay as they are.

None of these is exact: the image changes a little, so the method goes into the infotext.
"""

import importlib.util

import torch

from webui.api import ExtensionError, Setting, denoiser_of, hookimpl, option_value

EASEL_API_VERSION = "2.0"
REQUIREMENTS = ["optimum-quanto (int8 on CPU/CUDA)", "bitsandbytes (optional, CUDA only)"]

METHODS = ["none", "quanto-int8", "bnb-nf4", "bnb-int8", "fp8-storage"]
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@hookimpl
def register_settings(register):
    """The quantization method and whether the text encoders are quantized too."""
    register(Setting(key="quantization.method", label="Quantization", default="none", kind="choice",
                     choices=METHODS, section="Memory",
                     help="quanto-int8: CPU and CUDA; bnb-*: bitsandbytes, CUDA only, diffusers folders/hub "
                          "models; fp8-storage: weights stored in float8, computed in the model dtype"))
    register(Setting(key="quantization.text_encoders", label="Quantize the text encoders too (T5 of SD3.5)",
                     default=False, kind="bool", section="Memory"))


def method_reason(method, device):
    """Why ``method`` cannot run on ``device`` (None when it can)."""
    if method == "quanto-int8" and importlib.util.find_spec("optimum") is None:
        return "optimum-quanto is not installed (pip install optimum-quanto)"
    if method == "quanto-int8" and importlib.util.find_spec("optimum.quanto") is None:
        return "optimum-quanto is not installed (pip install optimum-quanto)"
    if method.startswith("bnb-"):
        if device.type != "cuda":
            return f"bitsandbytes needs CUDA (this device is {device.type})"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install bitsandbytes)"
    if method == "fp8-storage" and not hasattr(torch, "float8_e4m3fn"):
        return "this PyTorch has no float8 dtype"
    return None


@hookimpl
def option_availability(device, context):
    """bitsandbytes needs CUDA; quanto needs its package."""
    reasons = {}
    for method in METHODS[1:]:
        reason = method_reason(method, device)
        if reason:
            reasons[f"quantization.method={method}"] = reason
    return reasons


def _targets(model, with_text_encoders):
    pipe = model.pipeline
    names = ["unet" if getattr(pipe, "unet", None) is not None else "transformer"]
    if with_text_encoders:
        names += [name for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None]
    return names


def _quanto(model, names):
    from optimum.quanto import freeze, qint8, quantize

    for name in names:
        module = getattr(model.pipeline, name)
        quantize(module, weights=qint8)
        freeze(module)


def _bitsandbytes(model, names, method):
    from diffusers.quantizers import PipelineQuantizationConfig

    source = model.source
    if source.kind not in ("hub", "folder"):
        raise ExtensionError("bitsandbytes quantizes while loading: it needs a diffusers folder or a hub model, "
                             f"not a {source.kind} model; use quanto-int8 or fp8-storage for this one.")
    if method == "bnb-nf4":
        backend, kwargs = "bitsandbytes_4bit", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                 "bnb_4bit_compute_dtype": model.dtype}
    else:
        backend, kwargs = "bitsandbytes_8bit", {"load_in_8bit": True}
    config = PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=names)
    pipe = model.pipeline
    for name in names:
        current = getattr(pipe, name)
        is_diffusers = type(current).__module__.startswith("diffusers")
        component_config = config._resolve_quant_config(is_diffusers=is_diffusers, module_name=name)
        reloaded = type(current).from_pretrained(source.location, subfolder=name, dtype=model.dtype,
                                                 quantization_config=component_config)
        setattr(pipe, name, None)
        pipe.register_modules(**{name: reloaded})
        del current


@hookimpl
def configure_pipeline(model, context):
    """Quantize (or fp8-cast) the denoiser and optionally the text encoders."""
    method = option_value(context, "quantization.method")
    if method == "none":
        return
    reason = method_reason(method, model.device)
    if reason:
        raise ExtensionError(f"Quantization {method!r} is not available: {reason}.")
    names = _targets(model, bool(option_value(context, "quantization.text_encoders")))
    if method == "quanto-int8":
        _quanto(model, names)
    elif method.startswith("bnb-"):
        _bitsandbytes(model, names, method)
    elif method == "fp8-storage":
        for name in names:
            module = getattr(model.pipeline, name)
            if hasattr(module, "enable_layerwise_casting"):
                module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=model.dtype)
            else:  # transformers text encoders: diffusers' hook works on any nn.Module
                from diffusers.hooks import apply_layerwise_casting

                apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=model.dtype,
                                        skip_modules_pattern=("embed", "norm"))
    else:
        raise ExtensionError(f"Unknown quantization method {method!r}")
    model.extension_state["quantization"] = method + ("+te" if len(names) > 1 else "")


@hookimpl
def infotext_fields(request, model):
    """Record the quantization (it changes the image)."""
    value = model.extension_state.get("quantization")
    return {"Quantization": value} if value else None
