"""Memory presets a user recognises (``--medvram``, ``--lowvram``) and what to do when memory runs out.

A preset sets the options of the other memory extensions (through the ``preset_values``
hook, read by ``webui.api.option_value``), so ``--lowvram`` means the same thing whatever
the individual settings say, and is written into every image's infotext as
``Memory profile``.

* ``medvram``: model CPU offload (GPU), VAE slicing, VAE tiling above the threshold.
* ``lowvram``: group offload at leaf level with CUDA streams (GPU: near-sequential memory at
  a fraction of its cost), VAE slicing, VAE tiling at every size in 256-pixel tiles.

Attention stays on PyTorch SDPA in both: its memory-efficient kernels already avoid the
full attention matrix that A1111's sliced attention was invented to avoid (sliced
attention is still an option of the attention extension). On the CPU there is no offload
(the weights are in CPU memory already): the presets keep their VAE part there, and the
infotext says so.

Out of memory: the advice names the options that are still off; with "retry" on, the job
runs again under the next lower profile (custom -> medvram -> lowvram). Only that job: the
app's profile setting is left as it is, and the next job runs with it.
"""

from webui.api import Setting, hookimpl, option_value

EASEL_API_VERSION = "2.0"

PROFILES = ["custom", "medvram", "lowvram"]


def preset_table(profile, device):
    """The option values of ``profile`` on ``device`` (empty for custom)."""
    gpu = device.type == "cuda"
    if profile == "medvram":
        return {"offload.mode": "model" if gpu else "none", "vae.slicing": True, "vae.tiling": "auto"}
    if profile == "lowvram":
        return {"offload.mode": "group-leaf" if gpu else "none", "vae.slicing": True, "vae.tiling": "on",
                "vae.tile_size": 256}
    return {}


@hookimpl
def register_settings(register):
    """The active memory profile and the automatic retry on out-of-memory."""
    register(Setting(key="presets.profile", label="Memory profile", default="custom", kind="choice",
                     choices=PROFILES, section="Memory",
                     help="custom: the options below; medvram/lowvram (as --medvram/--lowvram) override them"))
    register(Setting(key="presets.oom_retry", label="On out-of-memory, retry with the next lower-memory profile",
                     default=False, kind="bool", section="Memory"))


@hookimpl
def preset_values(context):
    """The values the active profile imposes."""
    return preset_table(context.setting("presets.profile"), context.device) or None


@hookimpl
def configure_pipeline(model, context):
    """Remember the profile the model was configured with (for the infotext)."""
    profile = context.setting("presets.profile")
    if profile != "custom" and model.device.type != "cuda":
        profile += f" (no offload on {model.device.type})"
    model.extension_state["profile"] = profile


@hookimpl
def infotext_fields(request, model):
    """Record the memory profile."""
    profile = model.extension_state.get("profile")
    return {"Memory profile": profile} if profile and profile != "custom" else None


def advice(context, device):
    """Which options that are still off would lower the memory."""
    tips = []
    if option_value(context, "vae.tiling") != "on":
        tips.append("VAE tiling 'on' (Settings > Memory)")
    if device.type == "cuda" and option_value(context, "offload.mode") in ("none", "auto"):
        tips.append("CPU offload 'model' or 'group-leaf'")
    if device.type == "cuda" and option_value(context, "quantization.method") == "none":
        tips.append("quantization (bnb-nf4 or quanto-int8)")
    profile = context.setting("presets.profile")
    if profile != "lowvram":
        tips.append("the --lowvram profile" if profile == "medvram" else "the --medvram or --lowvram profile")
    return tips


@hookimpl
def out_of_memory(request, model, context, error):
    """Name the options that would help; with retry on, step down one profile and ask for a retry."""
    tips = advice(context, model.device)
    message = "Would help: " + "; ".join(tips) + "." if tips else "Already at the lowest-memory profile: " \
        "try a smaller size or batch."
    profile = context.setting("presets.profile")  # this job's: a retried job sees its lower profile
    if context.setting("presets.oom_retry") and profile != "lowvram":
        lower = PROFILES[PROFILES.index(profile) + 1]
        return {"advice": f"{message} Retrying with the {lower} profile.", "retry": True,
                "settings": {"presets.profile": lower}}  # for this job only: the app's setting stays
    return {"advice": message}
