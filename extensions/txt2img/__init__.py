"""txt2img: the text-to-image tab, written only against the public extension API."""

from webui.api import Setting, Tab, hookimpl

from .tab import render_txt2img_tab

EASEL_API_VERSION = "2.0"


@hookimpl
def register_settings(register):
    """Settings of the txt2img tab."""
    register(Setting(
        key="txt2img.save_images", label="Save every image to the outputs folder", default=True, kind="bool",
        section="txt2img", help="PNG files with the generation parameters embedded, under outputs/txt2img/<date>/",
    ))
    register(Setting(
        key="txt2img.preview", label="Show live previews while generating", default=True, kind="bool",
        section="txt2img", help="A cheap preview computed from the latents every few steps (no VAE decode)",
    ))


@hookimpl
def register_tabs(register):
    """The txt2img tab, first in the UI."""
    register(Tab(id="txt2img", label="txt2img", render=render_txt2img_tab, order=10))
