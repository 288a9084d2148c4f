"""Helpers for memory extensions, re-exported by :mod:`webui.api`.

Kept small: the memory options themselves live in the built-in extensions
(``extensions/attention``, ``vae``, ``offload``, ``quantization``, ``speed``, ``presets``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from webui.extension_context import app_of

if TYPE_CHECKING:
    from webui.context import EaselContext
    from webui.extension_context import ExtensionContext

MAX_OOM_RETRIES = 2

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(text: Any) -> int | None:
    """``"6GB"``, ``"6 GiB"``, ``"512MB"``, ``"6"`` (GB) -> bytes; empty or ``auto`` -> None.

    Sizes are binary (1 GB = 1024**3 bytes), as GPU tools report them. Raises ValueError.
    """
    if text is None:
        return None
    value = str(text).strip().lower().replace(" ", "")
    if value in ("", "auto", "none", "0"):
        return None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]*)", value)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a memory size (examples: 6GB, 512MB)")
    unit = match.group(2) or "gb"
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(num_bytes: float) -> str:
    """Bytes as a short human size (binary units)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{int(num_bytes)} B"


def device_memory(device: torch.device) -> tuple[int, int] | None:
    """``(free, total)`` bytes of an accelerator, or None for the CPU/unknown devices."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    return None


def module_bytes(module: Any) -> int:
    """Bytes held by a module's parameters and buffers (0 for anything that is not a module)."""
    if not isinstance(module, torch.nn.Module):
        return 0
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        total += tensor.numel() * tensor.element_size()
    return total


def pipeline_modules(pipeline: Any) -> dict[str, torch.nn.Module]:
    """The ``torch.nn.Module`` components of a diffusers pipeline, by name."""
    components = getattr(pipeline, "components", {}) or {}
    return {name: module for name, module in components.items() if isinstance(module, torch.nn.Module)}


def denoiser_of(pipeline: Any) -> torch.nn.Module | None:
    """The UNet or the transformer of a pipeline."""
    return getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)


def option_availability(context: "ExtensionContext | EaselContext") -> dict[str, str]:
    """Every unavailable option value on this app's device, with its reason (``option_availability`` hooks)."""
    context = app_of(context)
    reasons: dict[str, str] = {}
    for result in context.plugins.call("option_availability", device=context.pipelines.device, context=context):
        reasons.update({str(key): str(value) for key, value in dict(result).items() if value})
    return reasons


def option_value(context: "ExtensionContext | EaselContext", key: str, default: Any = None) -> Any:
    """A memory option as it applies now: an active preset's value, else the setting."""
    context = app_of(context)
    for values in context.plugins.call("preset_values", context=context):
        if isinstance(values, dict) and key in values:
            spec = next((s for s in context.settings.specs if s.key == key), None)
            return spec.coerce(values[key]) if spec is not None else values[key]
    return context.settings.get(key, default)


def is_available(context: "ExtensionContext | EaselContext", key: str, value: Any = None) -> str | None:
    """None when ``key`` (set to ``value``) works on this device, else the reason it does not."""
    reasons = option_availability(context)
    if value is not None and f"{key}={value}" in reasons:
        return reasons[f"{key}={value}"]
    return reasons.get(key)
