"""API 2.0: extensions get a narrow context facade; API 1.x extensions load through the adapter;
other versions are refused with the reason."""

from __future__ import annotations

import textwrap
import warnings

import pytest

from webui.api import API_VERSION, NAMES_SINCE, ExtensionContext, GenerationRequest, option_value

SMALL = dict(width=64, height=64, steps=2, cfg_scale=5.0, save=False, seed=1, model="tiny", prompt="x")
INTERNALS = ("settings", "pipelines", "plugins", "queue", "recorder", "job_queue", "job_recorder", "_facade")


def write_extension(folder, name, body):
    target = folder / name
    target.mkdir(parents=True)
    (target / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return target


def test_every_public_member_of_the_facade_is_versioned_and_documented():
    public = {name for name in dir(ExtensionContext) if not name.startswith("_")}
    assert public, "the facade has no public members"
    missing = sorted(name for name in public if f"ExtensionContext.{name}" not in NAMES_SINCE)
    assert not missing, f"members without a NAMES_SINCE entry: {missing}"
    for name in public:
        member = getattr(ExtensionContext, name)
        target = member.fget if isinstance(member, property) else member
        assert (target.__doc__ or "").strip(), f"ExtensionContext.{name} has no docstring"
    assert not set(INTERNALS) & public


def test_a_2_0_extension_gets_the_facade_and_no_internals(make_context, tmp_path):
    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "modern", """
        '''Written against API 2.0.'''
        from webui.api import hookimpl

        EASEL_API_VERSION = "2.0"

        @hookimpl
        def app_started(context):
            '''Record what the context is and what it answers.'''
            seen = context.extension_state.setdefault("modern", {})
            seen["type"] = type(context).__name__
            seen["reachable"] = [name for name in ("settings", "pipelines", "plugins", "queue", "job_queue",
                                                   "recorder") if hasattr(context, name)]
            seen["save_images"] = context.setting("txt2img.save_images")
            try:
                context.anything = 1
            except AttributeError:
                seen["read_only"] = True

        @hookimpl
        def before_generation(request, model, context):
            '''Record the context a job's hook gets, and the loaded models it can see.'''
            context.extension_state["modern"]["job_context"] = type(context).__name__
            context.extension_state["modern"]["loaded"] = context.loaded_models()
    """)
    app = make_context(extra_extension_dirs=[drop_ins])
    info = {item.name: item for item in app.extensions()}["modern"]
    assert info.status == "loaded" and not info.adapted, info
    seen = app.extension_state["modern"]
    assert seen["type"] == "ExtensionContext" and seen["reachable"] == [] and seen["read_only"] is True
    assert seen["save_images"] is True

    app.generate(GenerationRequest(**SMALL))
    assert seen["job_context"] == "ExtensionContext" and seen["loaded"] == ["tiny"]


def test_the_facade_does_what_its_methods_say(make_context):
    app = make_context()
    facade = app.for_extensions
    assert facade is app.for_extensions and facade.for_extensions is facade
    assert facade.models_dir == app.models_dir and facade.datasets_dir == app.data_dir / "datasets"
    assert facade.set_setting("txt2img.save_images", False) is False and app.setting("txt2img.save_images") is False
    with facade.use_model("tiny") as model:
        assert model.name == "tiny" and facade.loaded_models() == ["tiny"]
    assert option_value(facade, "vae.tiling") == option_value(app, "vae.tiling")

    with facade.device_lock():  # the first job waits for the device; the second waits behind it
        first = facade.submit(GenerationRequest(**SMALL))
        second = facade.submit(GenerationRequest(**SMALL))
        assert facade.cancel(second) == "cancelled"
    result = facade.wait_for(first, timeout=120)
    assert len(result.images) == 1 and first.status == "finished"
    with pytest.raises(Exception, match="cancelled before it started"):
        facade.wait_for(second, timeout=120)


def test_a_1x_extension_loads_through_the_adapter_with_deprecation_warnings(make_context, tmp_path):
    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "vintage", """
        '''Written against API 1.3: reaches context.settings and context.pipelines.'''
        import warnings

        from webui.api import Tab, hookimpl

        EASEL_API_VERSION = "1.3"

        def caught(read):
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                value = read()
            return value, [str(item.message) for item in seen if item.category is DeprecationWarning]

        @hookimpl
        def app_started(context):
            '''Read a setting the 1.x way.'''
            state = context.extension_state.setdefault("vintage", {})
            state["setting"], state["warnings"] = caught(lambda: context.settings.get("txt2img.save_images"))

        @hookimpl(wrapper=True)
        def before_generation(request, model, context):
            '''A wrapper that reads the loaded models the 1.x way.'''
            state = context.extension_state["vintage"]
            state["loaded"], state["job_warnings"] = caught(lambda: context.pipelines.loaded_names())
            return (yield)

        @hookimpl
        def register_tabs(register):
            '''A tab whose render reaches ui.context.settings.'''
            def render(ui):
                import gradio as gr

                value, said = caught(lambda: ui.context.settings.get("txt2img.save_images"))
                ui.context.extension_state["vintage"]["tab"] = (value, said, ui.last_used("vintage"))
                gr.Markdown("vintage")

            register(Tab(id="vintage", label="Vintage", render=render))
    """)
    app = make_context(extra_extension_dirs=[drop_ins])
    info = {item.name: item for item in app.extensions()}["vintage"]
    assert info.status == "loaded" and info.adapted and info.api_version == "1.3", info
    state = app.extension_state["vintage"]
    assert state["setting"] is True
    assert any("context.settings is API 1.x" in text and "context.setting(key)" in text for text in state["warnings"])

    app.generate(GenerationRequest(**SMALL))
    assert state["loaded"] == ["tiny"] and any("context.pipelines" in text for text in state["job_warnings"])

    from webui.app import create_blocks

    blocks = create_blocks(app)
    assert state["tab"][0] is True and any("context.settings" in text for text in state["tab"][1])
    assert state["tab"][2] == {}  # the adapted ui still has the UI context's own methods
    table = next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "extensions-table")
    rows = {row[0]: dict(zip(table.value["headers"], row)) for row in table.value["data"]}
    assert rows["vintage"]["API"] == "1.3 (1.x adapter)" and rows["txt2img"]["API"] == API_VERSION
    assert not [f for f in app.plugins.failures if f.extension == "vintage"]


@pytest.mark.parametrize(("declared", "reason"), [
    ("3.0", "update Easel"), ("2.9", "update Easel"), ("0.9", "no longer supported"), ("two", "not MAJOR.MINOR"),
])
def test_other_api_versions_are_refused_with_the_reason(make_context, tmp_path, declared, reason):
    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "other", f"""
        from webui.api import hookimpl

        EASEL_API_VERSION = "{declared}"

        @hookimpl
        def app_started(context):
            '''Must never run.'''
            context.extension_state["other"] = "ran"
    """)
    app = make_context(extra_extension_dirs=[drop_ins])
    info = {item.name: item for item in app.extensions()}["other"]
    assert info.status == "failed" and reason in info.error and declared in info.error, info
    assert "other" not in app.extension_state


def test_the_deprecated_easel_context_name_still_imports_with_a_warning():
    with pytest.warns(DeprecationWarning, match="ExtensionContext"):
        from webui.api import EaselContext
    from webui.context import EaselContext as app_class

    assert EaselContext is app_class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from webui.api import ExtensionContext as facade_class  # noqa: F401 - the 2.0 name does not warn


def test_a_1x_extensions_job_task_runs_with_the_1x_context(make_context, tmp_path):
    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "vintage_task", """
        '''An API 1.4 job task that reaches context.settings.'''
        from webui.api import GenerationResult, JobTask, hookimpl

        EASEL_API_VERSION = "1.4"

        def run(context, request, job):
            context.extension_state["vintage_task"] = (type(context).__name__, context.settings.get("queue.limit"))
            return GenerationResult()

        @hookimpl
        def register_job_tasks(register):
            '''One task.'''
            register(JobTask(name="vintage", check=dict, run=run))
    """)
    app = make_context(extra_extension_dirs=[drop_ins])
    tasks = []
    app.call_hook("register_job_tasks", register=tasks.append)
    task = next(task for task in tasks if task.name == "vintage")
    with pytest.warns(DeprecationWarning, match="context.settings"):
        task.run(app.for_extensions, {}, None)
    assert app.extension_state["vintage_task"] == ("LegacyContext", app.setting("queue.limit"))
