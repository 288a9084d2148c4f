"""Every hook an Easel extension can implement, each with its contract.

Extensions implement these with ``@hookimpl`` from :mod:`webui.api` (never import this
module in an extension). An implementation may accept any subset of the listed
arguments, in any order, by name. Hooks are called for every enabled extension; an
implementation that raises is reported on the Extensions page and skipped, and the
call goes on with the other extensions.

Calling: pluggy calls the hooks, so ``@hookimpl(tryfirst=True)``, ``trylast`` and
``@hookimpl(wrapper=True)`` (a generator that yields once, receives the list of results, or
the single answer of a ``firstresult`` hook, and returns the result) work as pluggy documents;
pluggy calls the most recently registered extension first. A hook marked ``firstresult`` stops
at the first implementation that returns something other than None. A failing implementation
counts as returning None; each failing (extension, hook) pair is listed once on the
Extensions page, with how many times it failed. Old-style ``hookwrapper=True`` is refused.

Registration hooks take a ``register`` callback (as ``llm`` does) instead of returning
lists, so one extension can register several things and the types stay checked.

The per-job hooks (``before_generation``, ``pipeline_call_kwargs``, ``infotext_fields``,
``after_generation``, ``out_of_memory``) run for every image job, whatever its task
(``request.task``: txt2img, img2img, inpaint), the Background tab's repaint included: it is an
``inpaint`` job. Its request carries the background prompt and negative, the model, steps,
CFG, seed, sampler, and ``width``/``height`` = the size the inpainting pipeline works at;
``extras["background.task"] == "inpaint"`` tells it apart from the img2img tab's inpainting,
with ``extras["background.strength"]`` (denoising strength) and
``extras["background.input_size"]`` (``(width, height)`` of the user's image). Keyword
arguments from ``pipeline_call_kwargs`` reach the pipeline of the job's task, so return only
arguments that pipeline takes (check ``request.task``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # only for the annotations: this module is imported before those modules exist
    import torch

    from webui.api import Control, Tab
    from webui.config import Setting
    from webui.extension_context import ExtensionContext
    from webui.jobs import GenerationRequest, GenerationResult
    from webui.pipelines.manager import LoadedModel
    from fastapi import APIRouter

    from webui.job_store import JobTask

PROJECT_NAME = "easel"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_settings(register: Callable[[Setting], None]) -> None:
    """Declare settings this extension reads.

    Called once at start-up, before the UI is built. ``register(setting)`` takes a
    :class:`webui.api.Setting`; its ``key`` must be unique across extensions (prefix it
    with the extension name). Values are persisted in the data folder's config file and
    shown on the Settings tab. Returns nothing.
    """


@hookspec
def register_tabs(register: Callable[[Tab], None]) -> None:
    """Add top-level UI tabs.

    Called once while the Gradio Blocks app is built. ``register(tab)`` takes a
    :class:`webui.api.Tab`; its ``render(ui)`` callable is invoked inside the tab's
    ``gr.Tab`` context with a :class:`webui.api.UIContext` and creates the components.
    Returns nothing.
    """


@hookspec
def register_generation_controls(register: Callable[[Control], None], tab_id: str) -> None:
    """Add controls to a generation tab (txt2img, ...), like A1111's always-on scripts.

    Called while the tab ``tab_id`` is built (once per UI build, not once per page load).
    ``register(control)`` takes a :class:`webui.api.Control`; its ``render(ui)`` creates ONE
    Gradio component inside the tab's "Extensions" area and returns it. Whatever value that
    component holds when the user clicks Generate arrives in ``request.extras[control.key]``.
    API callers set the same key in the endpoint's one ``extras`` argument (Gradio's
    ``/txt2img`` and ``/img2img``: ``extras={"lora.names": [...]}``; since API 1.4 the
    controls are no longer positional arguments). Return nothing; register nothing for tabs
    you do not serve.
    """


@hookspec
def app_started(context: ExtensionContext) -> None:
    """Called once after all extensions are loaded and settings registered.

    ``context`` is the :class:`webui.api.ExtensionContext` of the running app. Use it to
    prepare state that needs the app (not for heavy work: the UI is not up yet); keep such
    state in ``context.extension_state[<your extension's name>]`` (API 1.2), not in
    module-level globals.
    Returns nothing.
    """


@hookspec(firstresult=True)
def device_in_use(context: ExtensionContext) -> str | None:
    """Say when something outside the job queue holds the queue's device (API 1.3; ``firstresult`` since 1.4).

    ``context`` is the :class:`webui.api.ExtensionContext`. Return a short sentence for the user
    (e.g. ``"a LoRA training run (my_lora, step 120/500) is using the GPU"``) while it does,
    else None. While any extension says so, the queue starts no new job: waiting jobs show
    the sentence on their page and start once it is over, instead of running out of memory
    halfway. (With Ray workers, ``--backend ray``, only the worker on the front's GPU takes no
    jobs; the others go on.) ``firstresult``: the first extension that answers (not None) is the one shown,
    the others are not asked. Called often (about once a second while jobs wait): answer from
    state you keep, never do slow work here.
    """


@hookspec
def configure_pipeline(model: LoadedModel, context: ExtensionContext) -> None:
    """Configure a freshly loaded pipeline (memory options, attention, offload, ...).

    Called once per load, right after the model is loaded on the CPU and before it is moved
    to ``model.device``, while the device lock is held and before any generation uses it.
    A settings change does not call it on a loaded pipeline: the manager drops the idle
    models and the next job loads (and configures) the model again. ``model`` is a
    :class:`webui.api.LoadedModel` (``model.pipeline`` is the diffusers pipeline,
    ``model.family`` one of ``sd1, sd2, sdxl, sdxl-refiner, sd3``); ``context`` the app's
    :class:`webui.api.ExtensionContext`. Modify the pipeline in place. Returns nothing.
    Raise :class:`webui.api.ExtensionError` to refuse a combination with a message the
    user will see.
    """


@hookspec
def before_generation(request: GenerationRequest, model: LoadedModel, context: ExtensionContext) -> None:
    """Called before every image job (txt2img, img2img, inpaint — ``request.task``), with the device lock held.

    ``request`` is the :class:`webui.api.GenerationRequest` (validated, seeds not yet
    drawn); ``model`` the :class:`webui.api.LoadedModel` about to run it; ``context`` the
    app's :class:`webui.api.ExtensionContext` (folders, settings). An extension may adjust
    ``request`` (e.g. strip its own prompt syntax before the prompt is encoded),
    ``request.extras`` or the pipeline for this one job; undo pipeline changes in
    ``after_generation``, which always follows (also when this hook or the job raised).
    Called once per attempt: a job retried after running out of memory calls it again.
    Returns nothing.
    """


@hookspec
def pipeline_call_kwargs(request: GenerationRequest, model: LoadedModel) -> dict[str, Any] | None:
    """Extra keyword arguments for the diffusers pipeline call of this job.

    Return a dict (merged over the ones Easel builds; on a clash the extension called last
    wins, i.e. the one registered first) or None. Called once per job (once per attempt when
    an out-of-memory retry runs it again), after ``before_generation`` and before the first
    batch; the same arguments go to every batch's call of the job's own pipeline, never to
    an SDXL refiner's. A
    ``callback_on_step_end`` here runs at every step before Easel's own (progress,
    Interrupt, Skip), and what it returns goes back to the pipeline.
    """


@hookspec
def after_generation(request: GenerationRequest, model: LoadedModel, result: GenerationResult) -> None:
    """Called after a generation finished, was interrupted, or failed halfway (out of memory included).

    ``result`` is the :class:`webui.api.GenerationResult` with the images produced so far
    (already saved when saving is on). Returns nothing.
    """


@hookspec
def infotext_fields(request: GenerationRequest, model: LoadedModel) -> dict[str, Any] | None:
    """Extra ``key: value`` pairs for the image's infotext (A1111 format).

    Called once per job (per attempt), after ``before_generation`` and before the first
    batch; the fields go into every image of the job. Return a dict of field name to value
    (None values are left out), or None. Keys holding ``:``, ``,`` or quotes are dropped
    with a warning (A1111 could not read them back). Use it to
    record options that change the image, so the image can be reproduced. These fields only
    add keys: one that Easel or the job's task already writes (``Seed``, ``Denoising
    strength``, ...) is kept as Easel wrote it.
    """


# ----- memory options (API 1.1) ----------------------------------------------------------

@hookspec
def option_availability(device: torch.device, context: ExtensionContext) -> dict[str, str] | None:
    """Say which of this extension's option values cannot work on this device, and why.

    ``device`` is the :class:`torch.device` the pipeline manager uses. Return a dict mapping
    ``"setting.key=value"`` (one value of a choice setting) or ``"setting.key"`` (the whole
    option) to a short reason for the user, e.g. ``{"attention.backend=xformers": "xformers
    needs CUDA"}``; return None or ``{}`` when everything is available. The Settings tab shows
    the reasons, and ``configure_pipeline`` should refuse an unavailable value with
    :class:`webui.api.ExtensionError` carrying the same reason (never ignore it silently).
    """


@hookspec
def out_of_memory(request: GenerationRequest, model: LoadedModel, context: ExtensionContext,
                  error: BaseException) -> dict[str, Any] | None:
    """A generation ran out of memory; the memory is already freed.

    Called with the :class:`webui.api.GenerationRequest`, the :class:`webui.api.LoadedModel`
    it ran on, the app context and the ``torch.OutOfMemoryError``. Return None, or a dict
    with ``"advice"`` (a sentence telling the user which option would help) and optionally
    ``"retry": True`` with ``"settings"``: setting values (e.g. ``{"presets.profile":
    "medvram"}``) that should make the job fit. Easel then reloads the model and runs this
    job again with those values (at most :data:`webui.api.MAX_OOM_RETRIES` times); they apply
    to this job only (``context.setting`` returns them inside the retried job's hooks,
    since API 1.4), never to the app's settings or to later jobs, and once the job is over
    the model is loaded again with the app's own settings. Do not change the app's settings
    here: that would change them for every later user.
    """


@hookspec
def preset_values(context: ExtensionContext) -> dict[str, Any] | None:
    """The option values a memory preset imposes right now (``--medvram``, ``--lowvram``).

    Return a dict of setting key to value (or None when no preset is active). Not
    ``firstresult``: for each key the first extension whose dict holds it wins, so two
    presets that set different keys both apply. Memory
    extensions read their options through :func:`webui.api.option_value`, which returns a
    preset's value before the saved setting, so one preset can drive options declared by
    several extensions without any of them knowing the others.
    """


# ----- REST API (API 1.4) ----------------------------------------------------------------

@hookspec
def register_api_routes(router: APIRouter, context: ExtensionContext) -> None:
    """Add REST routes under Easel's own API prefix, ``/easel/v1`` (API 1.4).

    Called once when the server builds its ``/easel/v1`` router (only when the API is served).
    ``router`` is that ``fastapi.APIRouter``: add routes with ``@router.get("/myext/...")``
    and so on, under a path of your extension's name, with pydantic models for the bodies so
    they appear in the OpenAPI document; ``context`` is the app's
    :class:`webui.api.ExtensionContext`. Whatever protects the router (the API's authentication)
    protects these routes too. Raise ``fastapi.HTTPException`` with a message for errors
    (422 for bad input); never let a stack trace reach a response. Keep long work out of the
    route: offer it as a job task (``register_job_tasks``) that callers submit and poll.
    Returns nothing.
    """


@hookspec
def register_job_tasks(register: Callable[[JobTask], None]) -> None:
    """Add kinds of jobs to Easel's job API (``POST /easel/v1/jobs`` with ``"task": name``) (API 1.4).

    Called once, when the app's job records are first used (at start-up when some exist).
    ``register(task)`` takes a :class:`webui.api.JobTask`: its ``check`` validates a
    request and its ``run`` does the work on a thread of its own, generating through the
    queue with the job it is given. Such jobs are kept in the job store like any other:
    listed, cancelled, their images served, their webhooks called, and run again after a
    restart if they had not finished. Task names are unique; txt2img, img2img and inpaint
    are Easel's own. Returns nothing.
    """
