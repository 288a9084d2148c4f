"""The Extensions page: versions, API versions, sources, requirements checked against what is
installed (with the pip command), errors with counts, enable/disable saved for the next start,
and the "Install requirements" button only where it is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_options, start_server

NEEDY_EXTENSION = '''"""Needy: requires a package that is not installed, and fails in one hook."""
from webui.api import hookimpl

EASEL_API_VERSION = "1.0"
__version__ = "2.5.1"
REQUIREMENTS = ["easel-no-such-package>=1.0", "packaging>=1", "easel-other-missing (optional, GPU only)"]


@hookimpl
def before_generation(request, model, context):
    """Fails on every job (the job itself goes on)."""
    raise RuntimeError("needy is broken")
'''


@pytest.fixture
def drop_ins(tmp_path) -> Path:
    folder = tmp_path / "drop_ins" / "needy"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(NEEDY_EXTENSION)
    return folder.parent


def test_requirement_statuses():
    from webui.requirements_check import check_requirement, missing, pip_command_text

    present = check_requirement("packaging>=1")
    assert present.satisfied and present.installed and not present.optional
    absent = check_requirement("easel-no-such-package>=1.0")
    assert not absent.satisfied and absent.installed is None
    wrong = check_requirement("packaging<1")
    assert wrong.installed and not wrong.satisfied and "does not match" in wrong.describe()
    optional = check_requirement("xformers-not-here (optional, CUDA only)")
    assert optional.optional and optional.note == "optional, CUDA only"
    assert missing([present, absent, wrong, optional]) == [absent, wrong]
    assert pip_command_text([absent, wrong]).endswith("-m pip install 'easel-no-such-package>=1.0' 'packaging<1'")


def test_page_lists_versions_requirements_and_errors_with_counts(tmp_path, drop_ins):
    from gradio_client import Client

    from webui.jobs import GenerationRequest

    context, blocks, url = start_server(make_options(tmp_path, extra_extension_dirs=[drop_ins], model="tiny"))
    try:
        for seed in range(3):
            context.generate(GenerationRequest(model="tiny", width=64, height=64, steps=1, seed=seed, save=False))
        client = Client(url, verbose=False)
        table = client.predict(api_name="/extensions")
        requirements = client.predict(api_name="/extensions_requirements")
        rows = {row[0]: row for row in table["data"]}
        needy = rows["needy"]
        assert needy[1:5] == ["2.5.1", "1.0 (1.x adapter)", "folder", "loaded"]
        assert "easel-no-such-package>=1.0: not installed" in needy[5]
        assert "packaging>=1: " in needy[5] and "easel-other-missing: not installed (optional, GPU only)" in needy[5]
        assert needy[6] == "before_generation: RuntimeError: needy is broken (3 times)"
        assert rows["txt2img"][3] == "built-in" and rows["txt2img"][2] == "2.0"
        assert "`easel-no-such-package>=1.0`" in requirements
        assert "pip install 'easel-no-such-package>=1.0'" in requirements
        assert "easel-other-missing" not in requirements, "an optional requirement is not asked for"
    finally:
        blocks.close()


def test_disabling_is_saved_and_applied_at_the_next_start(tmp_path):
    from gradio_client import Client

    from webui.app import create_context

    options = make_options(tmp_path, model="tiny")
    context, blocks, url = start_server(options)
    try:
        names = [info.name for info in context.extensions() if info.name != "extensions_page"]
        message, table = Client(url, verbose=False).predict([n for n in names if n != "lora"],
                                                           api_name="/extensions_enable")
        assert "Disabled from the next start: lora" in message and "Restart" in message
        assert {row[0]: row[4] for row in table["data"]}["lora"] == "loaded (disabled at next start)"
        assert context.plugins.extensions["lora"].status == "loaded", "nothing changes before a restart"
    finally:
        blocks.close()
    restarted = create_context(options)
    assert restarted.plugins.extensions["lora"].status == "disabled"
    assert restarted.plugins.extensions["txt2img"].status == "loaded"


def _install_button_visible(blocks) -> bool:
    config = blocks.get_config_file() if hasattr(blocks, "get_config_file") else blocks.config
    for component in config["components"]:
        if component.get("props", {}).get("elem_id") == "extensions-install":
            return bool(component["props"].get("visible", True))
    raise AssertionError("no install button")


def test_install_button_only_where_allowed_and_pip_failures_are_shown(tmp_path, drop_ins):
    from webui.app import create_blocks, create_context

    options = make_options(tmp_path, extra_extension_dirs=[drop_ins], model="tiny")
    assert not _install_button_visible(create_blocks(create_context(options)))
    options.allow_extension_install = True
    context = create_context(options)
    assert _install_button_visible(create_blocks(context))

    import importlib

    page = importlib.import_module("easel_extensions.extensions_page")
    from webui.api import UIContext

    answer = page.install_requirements(UIContext(context=context))
    assert answer.startswith("pip failed") and "easel-no-such-package" in answer
