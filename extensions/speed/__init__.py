"""Speed: channels_last memory format and regional torch.compile of the repeated blocks.

``compile_repeated_blocks`` (diffusers) compiles only the repeated transformer blocks of the
UNet/transformer, so compilation takes seconds instead of minutes and is reused by every
block. The first generation after loading is slower (compilation); later ones are faster.
Neither option changes the image beyond float rounding.
"""

import shutil

import torch

from webui.api import ExtensionError, Setting, denoiser_of, hookimpl, option_value

EASEL_API_VERSION = "2.0"


@hookimpl
def register_settings(register):
    """channels_last and regional compilation."""
    register(Setting(key="speed.channels_last", label="channels_last memory format for the UNet/VAE",
                     default=False, kind="bool", section="Speed"))
    register(Setting(key="speed.compile", label="torch.compile the repeated blocks (regional compilation)",
                     default=False, kind="bool", section="Speed",
                     help="first generation after loading is slower while it compiles"))


def compile_reason(device):
    """Why torch.compile cannot run here (None when it can)."""
    if device.type == "mps":
        return "torch.compile is not supported on Apple MPS here"
    if device.type == "cpu" and shutil.which("cc") is None and shutil.which("gcc") is None:
        return "torch.compile on the CPU needs a C compiler (cc/gcc) on the PATH"
    return None


@hookimpl
def option_availability(device, context):
    """Compilation needs a C compiler on the CPU."""
    reason = compile_reason(device)
    return {"speed.compile": reason} if reason else None


@hookimpl
def configure_pipeline(model, context):
    """Switch the memory format and compile the repeated blocks."""
    pipe = model.pipeline
    denoiser = denoiser_of(pipe)
    applied = []
    if option_value(context, "speed.channels_last"):
        for module in (getattr(pipe, "unet", None), getattr(pipe, "vae", None)):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if option_value(context, "speed.compile"):
        reason = compile_reason(model.device)
        if reason:
            raise ExtensionError(f"torch.compile is not available: {reason}.")
        offload = option_value(context, "offload.mode", "none")
        if offload in ("sequential", "group-leaf"):
            raise ExtensionError(f"torch.compile and offload {offload!r} do not combine (hooks on every layer "
                                 "break the compiled graphs); switch one of them off.")
        try:
            denoiser.compile_repeated_blocks(fullgraph=False, dynamic=True)
        except ValueError:  # no _repeated_blocks declared (SD3 transformer): compile its block list
            blocks = getattr(denoiser, "transformer_blocks", None)
            if blocks is None:
                raise ExtensionError(f"{type(denoiser).__name__} declares no repeated blocks to compile") from None
            for block in blocks:
                block.compile(fullgraph=False, dynamic=True)
        applied.append("compile")
    if applied:
        model.extension_state["speed"] = "+".join(applied)
