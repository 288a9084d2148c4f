"""Offload: keep weights in CPU memory and bring them to the GPU when they are needed.

Modes (all diffusers' own switches):

* ``none``: the whole pipeline on the device.
* ``model``: ``enable_model_cpu_offload`` - one component (text encoder, UNet, VAE) on the
  GPU at a time. Little slower; needs the largest component plus activations.
* ``sequential``: ``enable_sequential_cpu_offload`` - leaf modules moved one at a time.
  Lowest memory, very slow.
* ``group-block`` / ``group-leaf``: ``enable_group_offload`` at block or leaf level with
  CUDA streams (prefetching the next group while the current one runs): close to
  ``sequential`` memory at a fraction of its cost.
* ``auto``: picks by the free GPU memory and ``offload.vram_budget`` (``--vram-budget
  6GB``), the way Forge and SD.Next's "balanced" mode do: ``none`` when the whole pipeline
  fits with head-room for activations, ``model`` when the largest component does,
  ``group-leaf`` otherwise.

Every mode but ``none`` needs an accelerator: on the CPU there is nothing to offload to.
"""

import torch

from webui.api import (
    ExtensionError,
    Setting,
    device_memory,
    format_size,
    hookimpl,
    option_value,
    parse_size,
    pipeline_modules,
    module_bytes,
)

EASEL_API_VERSION = "2.0"

MODES = ["none", "model", "sequential", "group-block", "group-leaf", "auto"]
#: Activations and the CUDA context need room beside the weights (fraction of the weights).
HEADROOM = 0.5


@hookimpl
def register_settings(register):
    """Offload mode and the GPU memory budget for ``auto``."""
    register(Setting(key="offload.mode", label="CPU offload", default="none", kind="choice", choices=MODES,
                     section="Memory",
                     help="model: one component on the GPU at a time; sequential: one layer at a time "
                          "(slow); group-*: groups of layers with CUDA-stream prefetching; auto: by free "
                          "memory and the budget"))
    register(Setting(key="offload.vram_budget", label="GPU memory budget (e.g. 6GB; empty: free memory)",
                     default="", kind="text", section="Memory"))


def offload_reason(device):
    """Why offloading cannot work on ``device`` (None when it can)."""
    if device.type == "cpu":
        return "offload needs a GPU: on the CPU the weights are already in CPU memory"
    if device.type == "mps":
        return "offload is not supported on Apple MPS here"
    return None


@hookimpl
def option_availability(device, context):
    """Every mode but none needs an accelerator."""
    reason = offload_reason(device)
    if not reason:
        return None
    return {f"offload.mode={mode}": reason for mode in MODES if mode != "none"}


def choose_auto(model, budget, free):
    """The ``auto`` decision: returns ``(mode, explanation)``."""
    sizes = {name: module_bytes(module) for name, module in pipeline_modules(model.pipeline).items()}
    total = sum(sizes.values())
    largest = max(sizes.values(), default=0)
    limit = min(x for x in (budget, free) if x is not None) if (budget or free) else None
    if limit is None:
        return "none", "no budget and no device memory reading"
    if total * (1 + HEADROOM) <= limit:
        return "none", f"the pipeline ({format_size(total)}) fits in {format_size(limit)}"
    if largest * (1 + HEADROOM) <= limit:
        return "model", f"the largest component ({format_size(largest)}) fits in {format_size(limit)}"
    return "group-leaf", f"even the largest component ({format_size(largest)}) does not fit in {format_size(limit)}"


@hookimpl
def configure_pipeline(model, context):
    """Apply the offload mode; the manager then leaves placement to diffusers' hooks."""
    mode = option_value(context, "offload.mode")
    try:
        budget = parse_size(option_value(context, "offload.vram_budget"))
    except ValueError as exc:
        raise ExtensionError(f"GPU memory budget: {exc}") from exc
    if mode == "none":
        return
    reason = offload_reason(model.device)
    if reason:
        raise ExtensionError(f"Offload mode {mode!r} is not available: {reason}. Choose none.")
    quant = option_value(context, "quantization.method", "none")
    if mode in ("sequential", "group-leaf", "group-block") and quant == "bnb-int8":
        raise ExtensionError(f"Offload {mode!r} cannot be combined with bitsandbytes int8: 8-bit bitsandbytes "
                             "layers cannot be moved to the CPU. Use offload 'model' or NF4 quantization.")
    if option_value(context, "speed.compile", False) and mode in ("sequential", "group-leaf"):
        raise ExtensionError(f"torch.compile and offload {mode!r} do not combine (hooks on every layer break "
                             "the compiled graphs); switch one of them off.")
    explanation = ""
    if mode == "auto":
        memory = device_memory(model.device)
        mode, explanation = choose_auto(model, budget, memory[0] if memory else None)
        model.extension_state["offload_auto"] = explanation
        if mode == "none":
            return
    pipe = model.pipeline
    device = model.device
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        level = "block_level" if mode == "group-block" else "leaf_level"
        kwargs = {"num_blocks_per_group": 1} if level == "block_level" else {}
        pipe.enable_group_offload(onload_device=device, offload_device="cpu", offload_type=level,
                                  use_stream=device.type == "cuda" and torch.cuda.is_available(), **kwargs)
    model.placement_done = True
    model.extension_state["offload"] = mode


@hookimpl
def infotext_fields(request, model):
    """Record the offload mode actually used (it does not change the image)."""
    mode = model.extension_state.get("offload")
    return {"Offload": mode} if mode else None
