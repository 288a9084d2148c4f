"""The public surface: every built-in extension uses only documented ``webui.api`` names that its
declared ``EASEL_API_VERSION`` already had (built-ins are written exactly as a third party would)."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import webui.api as api
from webui.plugins import API_VERSION, BUILTIN_EXTENSIONS

EXTENSIONS_DIR = Path(__file__).resolve().parent.parent / "extensions"

#: Hook arguments are named by their spec, so ``context.x`` / ``ui.x`` / ``model.x`` / ``request.x``
#: in an extension reach a member of these public classes (``form`` is how the generation tabs name
#: the ``generation_form`` module).
RECEIVER_CLASSES = {"context": "ExtensionContext", "ui": "UIContext", "model": "LoadedModel",
                    "request": "GenerationRequest", "form": "generation_form", "generation_form": "generation_form"}


#: Receivers whose every attribute must be public API: an unknown one is a reach into internals
#: (API 1.x's ``context.settings``) or a name that does not exist. ``model`` and ``request`` are
#: left out: extensions also name torch modules and their own objects so.
STRICT_RECEIVERS = {"ExtensionContext", "UIContext"}


def version(text: str) -> tuple[int, int]:
    major, minor = (int(part) for part in text.split(".")[:2])
    return major, minor


@dataclass
class Usage:
    """What one extension uses of the public API, read from the AST of its modules."""

    declared: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # webui.api name -> where
    members: dict[str, str] = field(default_factory=dict)  # "Class.member" -> where
    internals: dict[str, str] = field(default_factory=dict)  # "Class.member" not public -> where
    hooks: dict[str, str] = field(default_factory=dict)  # hook name -> where


def receiver_name(node: ast.expr) -> str | None:
    """``context`` for ``context.x``, ``ui.context.x`` and ``self.context.x``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl")


def hook_name(function: ast.FunctionDef) -> str:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call):
            for keyword in decorator.keywords:
                if keyword.arg == "specname" and isinstance(keyword.value, ast.Constant):
                    return keyword.value.value
    return function.name


def read_usage(folder: Path) -> Usage:
    """Every ``webui.api`` name, public member and hook the extension in ``folder`` uses."""
    usage = Usage()
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_aliases = set()  # local names bound to the webui.api module
        where = lambda node: f"{path.relative_to(EXTENSIONS_DIR)}:{node.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "webui.api":
                for alias in node.names:
                    usage.names.setdefault(alias.name, where(node))
            elif isinstance(node, ast.ImportFrom) and node.module == "webui":
                module_aliases.update(alias.asname or alias.name for alias in node.names if alias.name == "api")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "webui.api":
                        module_aliases.add(alias.asname or "webui.api")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = ast.unparse(node.value)
                if owner in module_aliases:
                    usage.names.setdefault(node.attr, where(node))
                cls = RECEIVER_CLASSES.get(receiver_name(node.value) or "")
                if cls and f"{cls}.{node.attr}" in api.NAMES_SINCE:
                    usage.members.setdefault(f"{cls}.{node.attr}", where(node))
                elif cls and (cls in STRICT_RECEIVERS or hasattr(getattr(api, cls), node.attr)
                              or node.attr in getattr(getattr(api, cls), "__dataclass_fields__", {})):
                    usage.internals.setdefault(f"{cls}.{node.attr}", where(node))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    is_hookimpl(decorator) for decorator in node.decorator_list):
                usage.hooks.setdefault(hook_name(node), where(node))
        if path == folder / "__init__.py":
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EASEL_API_VERSION"
                                                        for t in node.targets):
                    usage.declared = ast.literal_eval(node.value)
    return usage


def undocumented(name: str) -> str | None:
    """Why ``name`` (a ``webui.api`` name or ``Class.member``) is not documented, or None."""
    if "." in name:
        class_name, member = name.split(".", 1)
        cls = getattr(api, class_name)
        if member in getattr(cls, "__dataclass_fields__", {}) and not hasattr(cls, member):
            return None  # a dataclass field: described in its class
        attribute = inspect.getattr_static(cls, member, None)
        target = attribute.fget if isinstance(attribute, property) else attribute
        if callable(target) and not inspect.getdoc(target):
            return f"{name} has no docstring"
        return None
    if name not in api.__all__:
        return f"{name} is not in webui.api.__all__"
    if name not in api.NAMES_SINCE:
        return f"{name} has no entry in webui.api.NAMES_SINCE"
    value = getattr(api, name)
    if inspect.isclass(value) or inspect.isroutine(value) or inspect.ismodule(value) or callable(value):
        return None if inspect.getdoc(value) else f"{name} has no docstring"
    described = f"``{name}``" in (api.__doc__ or "") or f":data:`{name}`" in (api.__doc__ or "")
    return None if described else f"constant {name} is not described in webui.api's docstring"


def surface_problems(name: str, usage: Usage) -> list[str]:
    """Everything wrong with one extension's use of the API (empty when all is well)."""
    if usage.declared is None:
        return [f"{name} declares no EASEL_API_VERSION"]
    declared = version(usage.declared)
    problems = []
    for used, where in {**usage.names, **usage.members}.items():
        reason = undocumented(used)
        if reason:
            problems.append(f"{where}: {reason}")
        elif version(api.NAMES_SINCE.get(used, "1.0")) > declared:
            problems.append(f"{where}: {used} is API {api.NAMES_SINCE[used]}, {name} declares {usage.declared}")
    for member, where in usage.internals.items():
        problems.append(f"{where}: {member} is not public API (no entry in webui.api.NAMES_SINCE)")
    for hook, where in usage.hooks.items():
        if hook not in api.HOOKS_SINCE:
            problems.append(f"{where}: hook {hook} has no entry in webui.api.HOOKS_SINCE")
        elif version(api.HOOKS_SINCE[hook]) > declared:
            problems.append(f"{where}: hook {hook} is API {api.HOOKS_SINCE[hook]}, {name} declares {usage.declared}")
    if declared > version(API_VERSION):
        problems.append(f"{name} declares {usage.declared}, newer than this Easel's {API_VERSION}")
    return problems


def test_every_builtin_extension_loads(context):
    statuses = {info.name: info.status for info in context.extensions()}
    assert all(statuses.get(name) == "loaded" for name in BUILTIN_EXTENSIONS), statuses


@pytest.mark.parametrize("name", BUILTIN_EXTENSIONS)
def test_builtin_uses_only_documented_names_of_its_declared_api_version(name):
    usage = read_usage(EXTENSIONS_DIR / name)
    assert usage.names or usage.hooks, f"found nothing that {name} uses"
    assert not surface_problems(name, usage)


def test_the_version_tables_cover_the_whole_surface():
    """Every public name and every hook has a version, none newer than ``API_VERSION``."""
    from webui import hookspecs

    assert set(api.__all__) == {name for name in api.NAMES_SINCE if "." not in name}
    specs = {name for name, function in vars(hookspecs).items() if hasattr(function, "easel_spec")}
    assert specs == set(api.HOOKS_SINCE)
    for name, since in {**api.NAMES_SINCE, **api.HOOKS_SINCE}.items():
        assert version(since) <= version(API_VERSION), name
    for name in api.__all__:
        assert undocumented(name) is None, undocumented(name)


def test_the_surface_check_catches_a_new_name_an_undocumented_name_and_a_new_hook(tmp_path):
    """An extension that declares 1.0 but uses a 1.3 name, a member from 1.2, a private name and a 1.1 hook."""
    folder = tmp_path / "too_old"
    folder.mkdir()
    (folder / "__init__.py").write_text(
        'from webui.api import hookimpl, family_spec, _selected_index\n'
        'EASEL_API_VERSION = "1.0"\n\n'
        '@hookimpl\ndef app_started(context):\n    context.extension_state["too_old"] = family_spec("sd1")\n\n'
        '@hookimpl\ndef preset_values(context):\n    return None\n', encoding="utf-8")
    problems = " | ".join(surface_problems("too_old", read_usage_in(folder)))
    assert "family_spec is API 1.3" in problems
    assert "ExtensionContext.extension_state is API 1.2" in problems
    assert "_selected_index is not in webui.api.__all__" in problems
    assert "hook preset_values is API 1.1" in problems
    assert "app_started" not in problems and "hookimpl" not in problems


def test_the_surface_check_catches_a_new_reach_into_internals(tmp_path):
    folder = tmp_path / "reacher"
    folder.mkdir()
    (folder / "__init__.py").write_text(
        'from webui.api import hookimpl\nEASEL_API_VERSION = "2.0"\n\n'
        '@hookimpl\ndef app_started(context):\n    context.plugins.pm.register(object())\n\n'
        'def render(ui):\n    return ui.context.settings.specs, ui.blocks, ui.context.setting("x")\n', encoding="utf-8")
    problems = " | ".join(surface_problems("reacher", read_usage_in(folder)))
    assert "ExtensionContext.plugins is not public API" in problems
    assert "ExtensionContext.settings is not public API" in problems
    assert "ExtensionContext.setting" not in problems.replace("ExtensionContext.settings", "")
    assert "UIContext.blocks is not public API" in problems  # the shell's gr.Blocks: on_page_load is the API


def read_usage_in(folder: Path) -> Usage:
    """:func:`read_usage` for a folder outside the repository's ``extensions/``."""
    global EXTENSIONS_DIR
    saved, EXTENSIONS_DIR = EXTENSIONS_DIR, folder.parent
    try:
        return read_usage(folder)
    finally:
        EXTENSIONS_DIR = saved
