"""background: text-prompted subject mask + background replacement.

Detect the subject from a text prompt (Grounding DINO through transformers or
groundingdino-py), segment it (SAM / SAM 2 through transformers, or GrabCut without
weights), correct the mask (tools and painting), repaint everything else with the model
family's inpainting pipeline and paste the original subject back pixel-exactly.
Written only against :mod:`webui.api`.
"""

from webui.api import Setting, Tab, hookimpl

from .tab import render_background_tab

EASEL_API_VERSION = "2.0"
REQUIREMENTS = ["scipy>=1.10", "opencv-python-headless>=4.8,<5",
                "groundingdino-py==0.4.0 (optional, install with --no-deps; see README.md)"]


@hookimpl
def register_settings(register):
    """Settings of the Background tab."""
    register(Setting(
        key="background.save_images", label="Save results and masks to the outputs folder", default=True,
        kind="bool", section="Background",
        help="PNG files with the parameters embedded, under outputs/img2img-bg/<date>/ (masks in img2img-bg-masks/)",
    ))


@hookimpl
def register_tabs(register):
    """The Background tab, after txt2img."""
    register(Tab(id="background", label="Background", render=render_background_tab, order=20))


@hookimpl
def register_api_routes(router, context):
    """``/easel/v1/background/detect`` and ``/easel/v1/background/mask`` (see rest.py)."""
    from .rest import register_routes

    register_routes(router, context)


@hookimpl
def register_job_tasks(register):
    """The ``background`` job: detect, mask, inpaint and composite, as the tab's Replace background."""
    from .rest import background_job_task

    register(background_job_task())
