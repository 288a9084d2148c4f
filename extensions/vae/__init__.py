"""VAE: sliced decoding (one image of a batch at a time) and tiled decoding.

Tiling is what decides the largest image: the VAE decoder at full resolution holds the
biggest activations of the whole generation. ``vae.tiling`` = ``auto`` switches it on per
job when the width or height is above ``vae.tiling_threshold`` pixels (tiling blends
overlapping tiles, so it is not bit-exact; below the threshold the plain decoder runs).
"""

from webui.api import ExtensionError, Setting, hookimpl, option_value

EASEL_API_VERSION = "2.0"


@hookimpl
def register_settings(register):
    """VAE slicing, tiling and the auto-tiling threshold."""
    register(Setting(key="vae.slicing", label="VAE slicing (decode a batch one image at a time)", default=False,
                     kind="bool", section="Memory", help="exact; saves memory with batch size > 1"))
    register(Setting(key="vae.tiling", label="VAE tiling", default="auto", kind="choice",
                     choices=["off", "auto", "on"], section="Memory",
                     help="decode in overlapping tiles; auto: only above the threshold below"))
    register(Setting(key="vae.tile_size", label="VAE tile size (pixels; 0: the model's own, 512 for SD1.5)",
                     default=0, kind="int", minimum=0, maximum=4096, section="Memory",
                     help="smaller tiles: less memory, more seams to blend (multiple of 64)"))
    register(Setting(key="vae.tiling_threshold", label="Auto tiling above (pixels, width or height)",
                     default=1536, kind="int", minimum=64, maximum=16384, section="Memory"))


def _vae(model):
    vae = getattr(model.pipeline, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        raise ExtensionError(f"{model.name} has no VAE that supports slicing/tiling")
    return vae


@hookimpl
def configure_pipeline(model, context):
    """Switch VAE slicing on or off; tiling is decided per job in ``before_generation``."""
    slicing = bool(option_value(context, "vae.slicing"))
    tiling = option_value(context, "vae.tiling")
    if not slicing and tiling == "off":
        return
    vae = _vae(model)
    if slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    tile = int(option_value(context, "vae.tile_size") or 0)
    if tile and tile % 64:
        raise ExtensionError(f"VAE tile size must be a multiple of 64 pixels, not {tile}")
    if tile:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // factor
    model.extension_state["vae"] = {"slicing": slicing, "tiling": tiling, "tile": tile,
                                    "threshold": int(option_value(context, "vae.tiling_threshold"))}


def wants_tiling(state, width, height):
    """Whether a job of this size is decoded in tiles under ``state``."""
    if not state or state["tiling"] == "off":
        return False
    if state["tiling"] == "on":
        return True
    return max(int(width), int(height)) > state["threshold"]


@hookimpl
def before_generation(request, model):
    """Tile the decode of this job when tiling is on, or auto and the image is large."""
    state = model.extension_state.get("vae")
    if not state:
        return
    vae = model.pipeline.vae
    tiled = wants_tiling(state, request.width, request.height)
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    state["tiled_now"] = tiled


@hookimpl
def infotext_fields(request, model):
    """Record tiled decoding (it changes the image slightly)."""
    state = model.extension_state.get("vae")
    if state and wants_tiling(state, request.width, request.height):
        return {"VAE tiling": f"{state['tile']}px" if state.get("tile") else "on"}
    return None
