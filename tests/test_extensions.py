"""The extension API: discovery, hooks doing what they say, and failures isolated."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

from webui.api import ExtensionError, GenerationRequest, Setting, hookimpl

SMALL = dict(width=64, height=64, steps=2, cfg_scale=5.0, save=False, seed=1, model="tiny", prompt="x")


def write_extension(folder, name, body):
    target = folder / name
    target.mkdir(parents=True)
    (target / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return target


def test_builtins_load_through_the_public_api(context):
    infos = {info.name: info for info in context.extensions()}
    assert infos["txt2img"].status == "loaded" and infos["txt2img"].origin == "builtin"
    assert infos["extensions_page"].status == "loaded"
    assert context.settings.get("txt2img.save_images") is True


def test_builtin_extensions_import_only_the_public_api():
    import ast
    from pathlib import Path

    for path in (Path(__file__).resolve().parent.parent / "extensions").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("webui"):
                assert node.module == "webui.api", f"{path} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("webui") for alias in node.names), path


def test_broken_drop_in_extensions_are_listed_and_skipped(make_context, tmp_path):
    drop_ins = tmp_path / "more-extensions"
    write_extension(drop_ins, "import_fails", "import no_such_module_anywhere\n")
    write_extension(drop_ins, "too_new", "EASEL_API_VERSION = '9.0'\n")
    write_extension(drop_ins, "raises_in_hook", """
        '''Raises in every generation.'''
        from webui.api import hookimpl

        @hookimpl
        def before_generation(request, model):
            raise RuntimeError("boom")

        @hookimpl
        def infotext_fields(request, model):
            return {"Dropped in": "yes"}
    """)
    context = make_context(extra_extension_dirs=[drop_ins])
    infos = {info.name: info for info in context.extensions()}
    assert infos["import_fails"].status == "failed" and "No module named" in infos["import_fails"].error
    assert infos["too_new"].status == "failed" and "9.0" in infos["too_new"].error
    assert infos["raises_in_hook"].status == "loaded"
    assert infos["raises_in_hook"].description == "Raises in every generation."

    result = context.generate(GenerationRequest(**SMALL))
    assert len(result.images) == 1
    assert "Dropped in: yes" in result.images[0].infotext
    failures = [f for f in context.plugins.failures if f.extension == "raises_in_hook"]
    assert failures and failures[0].stage == "before_generation" and "boom" in failures[0].message

    from webui.app import create_blocks

    blocks = create_blocks(context)  # the UI still builds: every tab, and a table saying what failed and why
    tabs = {block.label for block in blocks.blocks.values() if type(block).__name__ == "Tab"}
    assert {"txt2img", "Background", "Train", "Settings", "Extensions"} <= tabs, tabs
    table = next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "extensions-table")
    rows = {row[0]: dict(zip(table.value["headers"], row)) for row in table.value["data"]}
    assert "failed" in rows["import_fails"]["Status"] and "No module named" in rows["import_fails"]["Errors"]
    assert "failed" in rows["too_new"]["Status"] and "9.0" in rows["too_new"]["Errors"]
    assert "loaded" in rows["raises_in_hook"]["Status"] and "loaded" in rows["txt2img"]["Status"]


def test_disabled_extension_is_not_loaded(make_context, tmp_path):
    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "noisy", "raise SystemError('should never run')\n")
    context = make_context(extra_extension_dirs=[drop_ins], disabled_extensions={"noisy"})
    assert {i.name: i.status for i in context.extensions()}["noisy"] == "disabled"


def test_extensions_page_status_is_plain_text(make_context, tmp_path):
    """The Status column holds words only: an emoji shows as an empty box in a browser without an emoji font."""
    import string

    from webui.api import UIContext

    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "import_fails", "import no_such_module_anywhere\n")
    write_extension(drop_ins, "noisy", "raise SystemError('should never run')\n")
    context = make_context(extra_extension_dirs=[drop_ins], disabled_extensions={"noisy"})
    page = next(plugin for plugin in context.plugins.pm.get_plugins()
                if getattr(plugin, "__name__", "").endswith("extensions_page"))
    rows = page.extension_rows(UIContext(context=context, blocks=None))
    statuses = {row[0]: row[4] for row in rows}
    assert statuses["txt2img"] == "loaded" and statuses["import_fails"] == "failed" and statuses["noisy"] == "disabled"
    safe = set(string.ascii_letters + string.digits + " -_().,:")
    assert all(set(status) <= safe for status in statuses.values()), statuses


def test_hooks_receive_typed_objects_and_change_the_pipeline(make_context):
    calls = SimpleNamespace(configured=[], before=[], after=[], kwargs=[])

    class Recorder:
        """Records every hook call."""

        @hookimpl
        def register_settings(self, register):
            register(Setting(key="recorder.flag", label="Flag", default=False, kind="bool"))

        @hookimpl
        def configure_pipeline(self, model, context):
            calls.configured.append((model.name, model.family, type(model.pipeline).__name__))
            model.pipeline.recorder_was_here = True

        @hookimpl
        def before_generation(self, request, model):
            assert model.pipeline.recorder_was_here
            calls.before.append(request.prompt)

        @hookimpl
        def pipeline_call_kwargs(self, request, model):
            calls.kwargs.append(True)
            return {"guidance_rescale": 0.0}

        @hookimpl
        def after_generation(self, request, model, result):
            calls.after.append(len(result.images))

    context = make_context(extra_plugins={"recorder": Recorder()})
    assert context.settings.get("recorder.flag") is False
    context.generate(GenerationRequest(**SMALL))
    assert calls.configured == [("tiny", "sd1", "StableDiffusionPipeline")]
    assert calls.before == ["x"] and calls.after == [1] and calls.kwargs == [True]


def test_extension_error_refuses_with_its_message(make_context, tmp_path):
    drop_ins = tmp_path / "more"
    write_extension(drop_ins, "picky", """
        from webui.api import ExtensionError, hookimpl

        @hookimpl
        def before_generation(request, model):
            if "forbidden" in request.prompt:
                raise ExtensionError("picky refuses forbidden prompts")
    """)
    context = make_context(extra_extension_dirs=[drop_ins])
    with pytest.raises(ExtensionError, match="picky refuses"):
        context.generate(GenerationRequest(**dict(SMALL, prompt="forbidden fruit")))
    assert len(context.generate(GenerationRequest(**SMALL)).images) == 1


def test_settings_and_last_used_values_persist_across_restarts(make_context):
    context = make_context()
    context.settings.set("txt2img.save_images", False)
    context.settings.remember("txt2img", {"prompt": "kept", "steps": 33})
    again = make_context()
    assert again.settings.get("txt2img.save_images") is False
    assert again.settings.last_used("txt2img") == {"prompt": "kept", "steps": 33}


def test_corrupt_config_file_is_kept_aside_and_defaults_used(make_context, tmp_path):
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "config.json").write_text("{not json", encoding="utf-8")
    context = make_context()
    assert context.settings.get("txt2img.save_images") is True
    assert (data / "config.json.broken").exists()


def test_invalid_setting_value_is_refused(context):
    context.settings.register(Setting(key="t.n", label="N", default=1, kind="int", minimum=1, maximum=4))
    with pytest.raises(ValueError, match="at most 4"):
        context.settings.set("t.n", 9)
    assert context.settings.get("t.n") == 1


PACKAGED_EXTENSION = '''
"""A packaged extension."""
from webui.api import Tab, hookimpl


@hookimpl
def register_tabs(register):
    def render(ui):
        raise RuntimeError("tab exploded")
    register(Tab(id="fake-tab", label="Fake", render=render))
'''


def test_installed_package_entry_point_is_discovered(make_context, tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist_info = site / "easel_fake_ext-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: easel-fake-ext\nVersion: 1.0\n",
                                        encoding="utf-8")
    (dist_info / "entry_points.txt").write_text("[easel.extensions]\nfake = easel_fake_ext\n", encoding="utf-8")
    (site / "easel_fake_ext.py").write_text(PACKAGED_EXTENSION, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    context = make_context(entry_points=True)
    infos = {info.name: info for info in context.extensions()}
    assert infos["fake"].origin == "package" and infos["fake"].status == "loaded"
    assert infos["fake"].description == "A packaged extension."

    from webui.app import create_blocks

    create_blocks(context)  # the exploding tab shows its error; the app is built
    assert any(f.extension == "fake-tab" and f.stage == "render" for f in context.plugins.failures)


# ----- pluggy's own hook calling, with failure isolation ---------------------------------------

def test_wrapper_hook_sees_and_changes_the_result(make_context):
    """A ``wrapper=True`` implementation runs around the others and its return value is the result."""
    seen = []

    class Plain:
        """Adds one infotext field."""

        @hookimpl
        def infotext_fields(self, request, model):
            return {"Plain": "one"}

    class Wrapper:
        """Renames every field the others return and adds its own."""

        @hookimpl(wrapper=True)
        def infotext_fields(self, request, model):
            results = yield
            seen.append([dict(fields) for fields in results])
            return [{f"Wrapped {key}": value for key, value in fields.items()} for fields in results] + [
                {"Wrapper": "yes"}]

    context = make_context(extra_plugins={"plain": Plain(), "wrapper": Wrapper()})
    result = context.generate(GenerationRequest(**SMALL))
    infotext = result.images[0].infotext
    assert {"Plain": "one"} in seen[0]  # the wrapper saw the other extension's answer
    assert "Wrapped Plain: one" in infotext and "Wrapper: yes" in infotext
    assert "Plain: one" not in infotext.replace("Wrapped Plain: one", "")
    assert not context.plugins.failures, context.plugins.failures


def test_firstresult_hook_stops_at_the_first_answer(context):
    """``device_in_use`` is ``firstresult``: the first non-None answer is the result, later ones are not asked."""
    asked = []

    class Idle:
        @hookimpl
        def device_in_use(self):
            asked.append("idle")
            return None

    class Busy:
        @hookimpl
        def device_in_use(self):
            asked.append("busy")
            return "busy training"

    class AlsoBusy:
        @hookimpl(trylast=True)
        def device_in_use(self):
            asked.append("also busy")
            return "never asked"

    assert context.plugins.is_firstresult("device_in_use")
    context.plugins.register_object("also_busy", AlsoBusy())
    context.plugins.register_object("busy", Busy())
    context.plugins.register_object("idle", Idle())  # registered last: pluggy asks it first
    assert context.plugins.call("device_in_use", context=context) == "busy training"
    assert context.device_in_use() == "busy training"
    assert asked.count("also busy") == 0 and asked.count("idle") == 2 and asked.count("busy") == 2


def bare_host(**plugins):
    """A plugin host holding only ``plugins`` (no built-ins): hook calls see exactly these."""
    from webui.plugins import PluginHost

    host = PluginHost()
    for name, plugin in plugins.items():
        host.register_object(name, plugin)
    return host


def test_failing_hook_is_reported_once_with_its_count():
    """A hook that raises on every call is one failure entry with a count; the other results still come back."""

    class Broken:
        @hookimpl
        def infotext_fields(self, request, model):
            raise RuntimeError("broken every time")

    class Works:
        @hookimpl
        def infotext_fields(self, request, model):
            return {"Works": request.prompt}

    host = bare_host(broken=Broken(), works=Works())
    calls = 5
    for number in range(calls):
        results = host.call("infotext_fields", request=GenerationRequest(**dict(SMALL, prompt=str(number))),
                            model=None)
        assert results == [{"Works": str(number)}]
    assert len(host.failures) == 1, host.failures
    failure = host.failures[0]
    assert (failure.extension, failure.stage, failure.count) == ("broken", "infotext_fields", calls)
    assert "broken every time" in failure.message and "RuntimeError" in failure.traceback
    assert host.failure_count("broken", "infotext_fields") == calls
    assert host.extensions["broken"].status == "loaded" and f"({calls} times)" in host.extensions["broken"].error


def test_failing_wrapper_passes_the_result_through():
    """A wrapper that raises after its ``yield`` is reported; the call returns the others' results unchanged."""

    class BrokenWrapper:
        @hookimpl(wrapper=True)
        def infotext_fields(self, request, model):
            yield
            raise ValueError("wrapper broke")

    class Works:
        @hookimpl
        def infotext_fields(self, request, model):
            return {"Works": "yes"}

    class BrokenBeforeYield:
        @hookimpl(wrapper=True)
        def infotext_fields(self, request, model):
            raise KeyError("before the yield")
            yield  # noqa: unreachable - makes this a generator

    host = bare_host(works=Works(), broken_wrapper=BrokenWrapper(), broken_early=BrokenBeforeYield())
    for _ in range(3):
        assert host.call("infotext_fields", request=None, model=None) == [{"Works": "yes"}]
    assert host.failure_count("broken_wrapper", "infotext_fields") == 3
    assert host.failure_count("broken_early", "infotext_fields") == 3
    assert len(host.failures) == 2


def test_extension_error_still_propagates_through_wrappers():
    """A refusal (``ExtensionError``) is not isolated: the caller gets it, and a wrapper sees it."""
    seen = []

    class Refuses:
        @hookimpl
        def before_generation(self, request):
            raise ExtensionError("refused")

    class Watches:
        @hookimpl(wrapper=True)
        def before_generation(self, request):
            try:
                return (yield)
            except ExtensionError as error:
                seen.append(str(error))
                raise

    host = bare_host(refuses=Refuses(), watches=Watches())
    with pytest.raises(ExtensionError, match="refused"):
        host.call("before_generation", request=None, model=None, context=None)
    assert seen == ["refused"] and not host.failures


def test_old_style_hookwrapper_is_refused_at_load():
    """``hookwrapper=True`` (pluggy's old style) cannot be isolated: the extension is refused with a message."""

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def infotext_fields(self, request, model):
            yield

    host = bare_host(old_style=OldStyle())
    assert host.extensions["old_style"].status == "failed" and "wrapper=True" in host.extensions["old_style"].error
    assert host.call("infotext_fields", request=None, model=None) == []


def test_every_hookspec_is_typed_and_documented():
    """pytest-style hookspecs: each parameter and the return carry a type that resolves, and a docstring."""
    import inspect
    import typing

    import fastapi
    import torch

    import webui.api
    import webui.config
    import webui.job_store
    import webui.extension_context
    import webui.jobs
    import webui.pipelines.manager
    from webui import hookspecs

    namespace = {**vars(hookspecs), "torch": torch, "Control": webui.api.Control, "Tab": webui.api.Tab,
                 "Setting": webui.config.Setting, "ExtensionContext": webui.extension_context.ExtensionContext,
                 "GenerationRequest": webui.jobs.GenerationRequest, "GenerationResult": webui.jobs.GenerationResult,
                 "LoadedModel": webui.pipelines.manager.LoadedModel, "APIRouter": fastapi.APIRouter,
                 "JobTask": webui.job_store.JobTask}
    specs = {name: function for name, function in vars(hookspecs).items()
             if inspect.isfunction(function) and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")}
    assert len(specs) >= 13, sorted(specs)
    for name, function in specs.items():
        parameters = inspect.signature(function).parameters
        hints = typing.get_type_hints(function, globalns=namespace)  # raises on a misspelt type
        assert set(parameters) | {"return"} == set(hints), f"{name}: untyped {set(parameters) - set(hints)}"
        assert len(inspect.getdoc(function) or "") > 80, f"{name} has no real docstring"
    assert specs["device_in_use"].easel_spec["firstresult"] is True


def test_job_settings_apply_only_inside_the_job_and_its_thread(context):
    """``settings.for_this_job`` (the out-of-memory retry's values) is seen by that thread only, and only inside."""
    import threading

    seen_elsewhere = []
    with context.settings.for_this_job({"presets.profile": "lowvram"}):
        assert context.settings.get("presets.profile") == "lowvram"
        other = threading.Thread(target=lambda: seen_elsewhere.append(context.settings.get("presets.profile")))
        other.start()
        other.join()
    assert seen_elsewhere == ["custom"]
    assert context.settings.get("presets.profile") == "custom"


# ----- no module-level mutable state in extensions ----------------------------------------------

#: Module-level calls that make no per-app state: loggers, compiled patterns, paths, and a lock that
#: guards patching a library class (process-wide by nature).
STATELESS_MODULE_CALLS = ("logging.getLogger", "re.compile", "Path(", "threading.Lock")
MUTATING_METHODS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear", "add",
                    "remove", "discard", "__setitem__"}


def module_level_state_problems(source: str) -> list[str]:
    """What in one extension module keeps state at module level: a ``global`` statement, a module-level
    object made by a call (other than :data:`STATELESS_MODULE_CALLS`), or a module-level dict/list/set
    that the module changes."""
    import ast

    tree = ast.parse(source)
    problems = []
    containers = {}
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [target.id for target in targets if isinstance(target, ast.Name)]
        value = node.value
        if isinstance(value, ast.Call) and not ast.unparse(value).startswith(STATELESS_MODULE_CALLS):
            problems.append(f"line {node.lineno}: {', '.join(names)} = {ast.unparse(value)[:60]}")
        if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
            containers.update({name: node.lineno for name in names})
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            problems.append(f"line {node.lineno}: global {', '.join(node.names)}")
        changed = None
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for target in node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                    changed = target.value.id
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING_METHODS
                and isinstance(node.func.value, ast.Name)):
            changed = node.func.value.id
        if changed in containers:
            problems.append(f"line {node.lineno}: changes the module-level {changed} (line {containers[changed]})")
    return problems


def test_extensions_keep_no_module_level_mutable_state():
    """Per-app state lives in ``context.extension_state`` (two apps in one process, or an extension imported
    twice, must not share or duplicate it)."""
    from pathlib import Path

    problems = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "extensions").rglob("*.py")):
        found = module_level_state_problems(path.read_text(encoding="utf-8"))
        if found:
            problems[str(path)] = found
    assert not problems, problems


def test_the_state_check_finds_what_it_looks_for():
    """The checker above flags a module-level cache, a cache object and ``global``; it leaves constants alone."""
    assert module_level_state_problems("_HASHES = {}\ndef h(k):\n    _HASHES[k] = 1\n")
    assert module_level_state_problems("SEEN = []\ndef f(x):\n    SEEN.append(x)\n")
    assert module_level_state_problems("MODELS = registry.ModelCache()\n")
    assert module_level_state_problems("count = 0\ndef f():\n    global count\n    count += 1\n")
    assert not module_level_state_problems("CHOICES = ['a', 'b']\nTAG = re.compile('x')\ndef f():\n    "
                                           "local = {}\n    local['a'] = CHOICES[0]\n")


def test_extension_state_is_per_app(make_context, tmp_path):
    """Two apps in one process keep their own Background model cache and LoRA hash cache."""
    import sys

    first, second = make_context(), make_context(data_dir=tmp_path / "other-data")
    engine = sys.modules["easel_extensions.background.engine"]
    lora = sys.modules["easel_extensions.lora"]
    assert engine.model_cache(first) is engine.model_cache(first)
    assert engine.model_cache(first) is not engine.model_cache(second)
    assert first.extension_state["background"].models is engine.model_cache(first)
    assert lora.hash_cache(first) is not lora.hash_cache(second)
