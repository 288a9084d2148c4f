"""The reference part of ``docs/extensions.md``, generated from the code's docstrings.

    python -m tools.extension_docs          # rewrite the reference in docs/extensions.md
    python -m tools.extension_docs --check  # exit 1 when it is stale (a test runs this)

Every hook of :mod:`webui.hookspecs` (signature with types, the version that introduced it,
``firstresult``, its docstring) and every name of ``webui.api.__all__`` (kind, signature,
version, docstring; a class's public members with theirs) go between the markers
``<!-- reference:start -->`` and ``<!-- reference:end -->``; the tutorial above them is
written by hand. A hook or public name without a docstring is an error.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "extensions.md"
START, END = "<!-- reference:start -->", "<!-- reference:end -->"


class MissingDocstring(Exception):
    """A hook or public API name has no docstring."""


def _doc(obj, what: str) -> str:
    text = inspect.getdoc(obj)
    if not text:
        raise MissingDocstring(f"{what} has no docstring")
    return text.strip()


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj)).replace("'", "")
    except (TypeError, ValueError):
        return "(...)"


def hook_reference() -> list[str]:
    from webui import api, hookspecs

    lines = ["### Hooks", "", "Implement any of these with `@hookimpl` (arguments by name, any subset, any order).", ""]
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if getattr(function, f"{hookspecs.PROJECT_NAME}_spec", None) is None:
            continue
        options = getattr(function, f"{hookspecs.PROJECT_NAME}_spec")
        since = api.HOOKS_SINCE.get(name, "?")
        first = " · firstresult (the first answer that is not None wins)" if options.get("firstresult") else ""
        lines += [f"#### `{name}{_signature(function)}`", "", f"*Since API {since}{first}.*", "",
                  _doc(function, f"hook {name}"), ""]
    return lines


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    if inspect.ismodule(obj):
        return "module"
    return "constant"


def name_reference() -> list[str]:
    from webui import api

    lines = ["### `webui.api`", "", "Everything an extension may import; nothing else is promised.", ""]
    for name in sorted(api.__all__, key=str.lower):
        obj = getattr(api, name)
        since = api.NAMES_SINCE.get(name, "?")
        kind = _kind(obj)
        if kind == "constant":
            shown = repr(obj)
            if " at 0x" in shown:  # an object without a stable value: say what it is
                shown = f"a {type(obj).__module__}.{type(obj).__qualname__}"
            lines += [f"#### `{name}` (constant)", "", f"*Since API {since}.* Value: `{shown[:300]}`", ""]
            continue
        signature = _signature(obj) if kind == "function" else ""
        lines += [f"#### `{name}{signature}` ({kind})", "", f"*Since API {since}.*", "", _doc(obj, name), ""]
        if kind in ("class", "module"):
            lines += _members(name, obj, api.NAMES_SINCE)
    return lines


def _members(owner: str, obj, since_table: dict[str, str]) -> list[str]:
    lines = []
    listed = sorted(key.split(".", 1)[1] for key in since_table if key.startswith(owner + "."))
    for member in listed:
        value = getattr(obj, member, None)
        if value is None:
            continue
        doc = inspect.getdoc(value) if (callable(value) or isinstance(value, property)) else ""
        summary = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
        signature = _signature(value) if inspect.isfunction(value) or inspect.ismethod(value) else ""
        lines.append(f"- `{owner}.{member}{signature}` (since {since_table[f'{owner}.{member}']}): {summary}".rstrip(": "))
    return lines + ([""] if lines else [])


def reference() -> str:
    return "\n".join([START, "", "## Reference (generated from the docstrings)", "",
                      *hook_reference(), *name_reference(), END])


def updated(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{DOC}: the markers {START} / {END} are missing")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return before + reference() + after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the reference is current")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    fresh = updated(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is stale: run python -m tools.extension_docs", file=sys.stderr)
            return 1
        print(f"{DOC} is current")
        return 0
    DOC.write_text(fresh, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
