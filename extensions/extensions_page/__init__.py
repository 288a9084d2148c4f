"""Extensions page: what is loaded, disabled or failed and why; requirements; enable/disable.

* A table: name, version, the extension API version it declares, source (built-in,
  package, folder), status, its declared requirements with what is installed, and its
  errors (each failing hook once, with how many times it failed).
* Missing requirements are listed with the pip command that installs them. Easel never
  runs pip by itself: an "Install requirements" button exists only when the server is
  bound to this machine (or started with ``--allow-extension-install``), and runs only
  when pressed.
* Enable / disable: the choice is saved (setting ``disabled_extensions``) and applied at
  the next start; the page says so.
"""

from __future__ import annotations

import subprocess

import gradio as gr

from webui.api import Tab, UIContext, check_requirement, hookimpl, pip_command, pip_command_text
from webui.api import unmet_requirements as missing

EASEL_API_VERSION = "2.0"

DISABLED_SETTING = "disabled_extensions"
THIS_PAGE = "extensions_page"
SOURCES = {"builtin": "built-in", "package": "package", "folder": "folder"}
HEADERS = ["Name", "Version", "API", "Source", "Status", "Requirements", "Errors"]
PIP_TIMEOUT_SECONDS = 900


def saved_disabled(ui: UIContext) -> set[str]:
    """The extensions saved as disabled (applied at start)."""
    return set(ui.context.setting(DISABLED_SETTING, []) or [])


def status_text(info, saved_at_start: set[str], saved_now: set[str]) -> str:
    """``loaded``, ``failed``, ``disabled``, and what a change saved on this page does at the next start."""
    if info.name in saved_now and info.name not in saved_at_start:
        return f"{info.status} (disabled at next start)"
    if info.name in saved_at_start and info.name not in saved_now:
        return f"{info.status} (enabled at next start)"
    return info.status


def api_column(info) -> str:
    """The API version an extension declares; "(1.x adapter)" when it is loaded through the adapter."""
    declared = info.api_version or "none"
    return f"{declared} (1.x adapter)" if getattr(info, "adapted", False) else (info.api_version or "-")


def extension_rows(ui: UIContext) -> list[list[str]]:
    """One row per extension (see :data:`HEADERS`)."""
    context = ui.context
    saved_at_start = set(context.extension_state.setdefault(THIS_PAGE, {}).setdefault(
        "saved_at_start", sorted(saved_disabled(ui))))
    saved_now = saved_disabled(ui)
    failures: dict[str, list[str]] = {}
    for failure in context.extension_failures():
        failures.setdefault(failure.extension, []).append(str(failure))
    rows = []
    for info in context.extensions():
        statuses = [check_requirement(text) for text in info.requirements]
        rows.append([
            info.name,
            info.version or "-",
            api_column(info),
            SOURCES.get(info.origin, info.origin),
            status_text(info, saved_at_start, saved_now),  # plain words: an emoji is a box without an emoji font
            "; ".join(status.describe() for status in statuses),
            "; ".join(failures.get(info.name, [])) or info.error,
        ])
    return rows


def missing_requirements(ui: UIContext):
    """Every enabled extension's required packages that are not installed (or do not match)."""
    found = {}
    for info in ui.context.extensions():
        if info.status == "disabled":
            continue
        for status in missing([check_requirement(text) for text in info.requirements]):
            found.setdefault(status.requirement, status)
    return list(found.values())


def missing_text(ui: UIContext) -> str:
    statuses = missing_requirements(ui)
    if not statuses:
        return "Every enabled extension has what it requires."
    return ("Missing requirements: " + ", ".join(f"`{status.requirement}`" for status in statuses)
            + f". Install them with:\n\n```\n{pip_command_text(statuses)}\n```\nthen restart Easel.")


def install_requirements(ui: UIContext) -> str:
    """Run pip for the missing requirements (only reachable where the page offers the button)."""
    statuses = missing_requirements(ui)
    if not statuses:
        return "Nothing to install."
    try:
        done = subprocess.run(pip_command(statuses), capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return f"pip did not finish within {PIP_TIMEOUT_SECONDS // 60} minutes."
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    if done.returncode != 0:
        return f"pip failed (exit {done.returncode}):\n```\n{tail}\n```"
    return f"Installed. Restart Easel to load the extensions that needed them.\n```\n{tail}\n```"


def render_extensions_tab(ui: UIContext) -> None:
    """The table, missing requirements, the enable/disable form."""
    context = ui.context
    gr.Markdown(
        "Extensions come from `extensions/` (built-in and drop-in folders) and from installed packages that "
        "declare an `easel.extensions` entry point. A failing extension is listed here and skipped; "
        "the rest of Easel keeps working."
    )
    table = gr.Dataframe(value=extension_rows(ui), headers=HEADERS, interactive=False, wrap=True,
                         elem_id="extensions-table")
    requirements = gr.Markdown(missing_text(ui), elem_id="extensions-requirements")
    install_allowed = bool(context.extension_install_allowed)
    with gr.Row():
        refresh = gr.Button("Refresh")
        install = gr.Button("Install requirements", visible=install_allowed, elem_id="extensions-install")
    install_log = gr.Markdown(elem_id="extensions-install-log")
    names = [info.name for info in context.extensions() if info.name != THIS_PAGE]
    enabled = gr.CheckboxGroup(names, value=[name for name in names if name not in saved_disabled(ui)],
                               label="Enabled extensions (applied at the next start)", elem_id="extensions-enabled")
    save = gr.Button("Save", elem_id="extensions-save")
    saved = gr.Markdown(elem_id="extensions-saved")

    def save_choice(chosen: list[str]):
        disabled = sorted(set(names) - set(chosen or []))
        context.set_setting(DISABLED_SETTING, disabled)
        change = ", ".join(disabled) if disabled else "none"
        return (f"Saved. Disabled from the next start: {change}. Restart Easel to apply it.",
                extension_rows(ui))

    refresh.click(lambda: extension_rows(ui), outputs=table, api_name="extensions").then(
        lambda: missing_text(ui), outputs=requirements, api_name="extensions_requirements")
    save.click(save_choice, inputs=enabled, outputs=[saved, table], api_name="extensions_enable")
    install.click(lambda: install_requirements(ui), outputs=install_log, api_name=False)


@hookimpl
def register_tabs(register):
    """The Extensions tab, after the feature tabs."""
    register(Tab(id="extensions", label="Extensions", render=render_extensions_tab, order=900))
