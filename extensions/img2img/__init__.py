"""img2img: the image-to-image tab with its Inpaint part, written only against the public extension API."""

from webui.api import Setting, Tab, hookimpl

from .tab import render_img2img_tab

EASEL_API_VERSION = "2.0"


@hookimpl
def register_settings(register):
    """Settings of the img2img tab."""
    register(Setting(
        key="img2img.save_images", label="Save every img2img / inpaint image to the outputs folder", default=True,
        kind="bool", section="img2img",
        help="PNG files with the generation parameters embedded, under outputs/img2img/ and outputs/inpaint/",
    ))


@hookimpl
def register_tabs(register):
    """The img2img tab, after txt2img."""
    register(Tab(id="img2img", label="img2img", render=render_img2img_tab, order=15))
