"""docs/extensions.md: the generated reference is current, and every hook and public name has a docstring."""

from __future__ import annotations

import inspect


def test_generated_reference_is_current():
    import difflib

    from tools import extension_docs

    current = extension_docs.DOC.read_text(encoding="utf-8")
    stale = list(difflib.unified_diff(current.splitlines(), extension_docs.updated(current).splitlines(), lineterm=""))
    assert not stale, "docs/extensions.md is stale; run: python -m tools.extension_docs\n" + "\n".join(stale[:40])


def test_every_hook_and_public_name_has_a_docstring():
    from tools import extension_docs
    from webui import api, hookspecs

    reference = extension_docs.reference()  # raises MissingDocstring for a hook or name without one
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if getattr(function, "easel_spec", None) is not None:
            assert f"#### `{name}(" in reference
    for name in api.__all__:
        assert f"#### `{name}" in reference


def test_a_hook_without_docstring_is_an_error(monkeypatch):
    import pytest

    from tools import extension_docs
    from webui import hookspecs

    monkeypatch.setattr(hookspecs.after_generation, "__doc__", None)
    with pytest.raises(extension_docs.MissingDocstring, match="after_generation"):
        extension_docs.reference()
