"""Attention: PyTorch SDPA (default), xformers memory-efficient attention (CUDA), sliced attention.

SD1/SD2/SDXL UNets and the SD3 transformer call SDPA through their attention processors, so
the backend is switched by installing processors (``set_attn_processor``,
``enable_xformers_memory_efficient_attention``, ``set_attention_slice``), never with
``set_attention_backend`` (which these model classes ignore).

On PyTorch 2 SDPA is already memory-efficient (flash / memory-efficient kernels on CUDA, a
flash kernel on the CPU); sliced attention materialises one slice of the attention matrix
at a time and only helps where SDPA's efficient kernels are missing.
"""

import importlib.util

from webui.api import ExtensionError, Setting, denoiser_of, hookimpl, option_value

EASEL_API_VERSION = "2.0"
REQUIREMENTS = ["xformers (optional, CUDA only)"]

BACKENDS = ["sdpa", "xformers", "sliced"]


@hookimpl
def register_settings(register):
    """The attention backend and the slice size of sliced attention."""
    register(Setting(key="attention.backend", label="Attention", default="sdpa", kind="choice",
                     choices=BACKENDS, section="Memory",
                     help="sdpa: PyTorch scaled-dot-product attention (memory-efficient kernels); xformers: "
                          "memory-efficient attention (CUDA, needs the xformers package); sliced: one slice "
                          "of heads at a time"))
    register(Setting(key="attention.slice_size", label="Attention slice size", default="auto", kind="text",
                     section="Memory", help="auto (half the heads), max (one head at a time) or a number"))


def xformers_reason(device):
    """Why xformers cannot be used on ``device`` (None when it can)."""
    if device.type != "cuda":
        return f"xformers needs CUDA (this device is {device.type})"
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install xformers matching your torch)"
    return None


def parse_slice_size(value):
    """``auto`` / ``max`` / a positive number, as diffusers' ``set_attention_slice`` takes it."""
    text = str(value or "auto").strip().lower()
    if text in ("auto", "max"):
        return text
    try:
        number = int(text)
    except ValueError:
        raise ExtensionError(f"Attention slice size must be auto, max or a number, not {value!r}") from None
    if number < 1:
        raise ExtensionError("Attention slice size must be at least 1")
    return number


@hookimpl
def option_availability(device, context):
    """xformers needs CUDA and the package; sliced attention needs a UNet (not SD3)."""
    reasons = {}
    reason = xformers_reason(device)
    if reason:
        reasons["attention.backend=xformers"] = reason
    return reasons


@hookimpl
def configure_pipeline(model, context):
    """Install the chosen attention processors on the UNet/transformer (and the VAE for xformers)."""
    backend = option_value(context, "attention.backend")
    pipe = model.pipeline
    denoiser = denoiser_of(pipe)
    model.extension_state["attention"] = backend
    if backend == "sdpa":
        if hasattr(denoiser, "set_default_attn_processor") and model.spec.default_attention_processor:
            from diffusers.models.attention_processor import AttnProcessor2_0

            denoiser.set_attn_processor(AttnProcessor2_0())
        return
    if backend == "xformers":
        reason = xformers_reason(model.device)
        if reason:
            raise ExtensionError(f"Attention 'xformers' is not available: {reason}. Choose sdpa or sliced.")
        pipe.enable_xformers_memory_efficient_attention()
        return
    if backend == "sliced":
        if not hasattr(denoiser, "set_attention_slice"):
            raise ExtensionError(f"Sliced attention is not available for {model.family} models "
                                 f"({type(denoiser).__name__} has no attention slicing); choose sdpa.")
        size = parse_slice_size(option_value(context, "attention.slice_size"))
        try:
            denoiser.set_attention_slice(size)
        except ValueError as exc:
            raise ExtensionError(f"Attention slice size {size!r} does not fit this model: {exc}") from exc
        model.extension_state["attention"] = f"sliced({size})"
        return
    raise ExtensionError(f"Unknown attention backend {backend!r}")


@hookimpl
def infotext_fields(request, model):
    """Record a non-default attention backend."""
    value = model.extension_state.get("attention")
    return {"Attention": value} if value and value != "sdpa" else None
