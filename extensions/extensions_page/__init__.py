"""Extensions page: what is loaded, disabled or failed, and why."""

import gradio as gr

from webui.api import Tab, UIContext, hookimpl

EASEL_API_VERSION = "1.0"


def extension_rows(ui: UIContext) -> list[list[str]]:
    """One row per extension: name, origin, status, description, requirements, error."""
    rows = []
    for info in ui.context.extensions():
        rows.append([
            info.name,
            info.origin,
            info.status,  # plain words (loaded, failed, disabled): an emoji is a box without an emoji font
            info.description,
            ", ".join(info.requirements),
            info.error,
        ])
    return rows


def render_extensions_tab(ui: UIContext) -> None:
    """A table of extensions with a refresh button (failures in hooks show up as they happen)."""
    gr.Markdown(
        "Extensions come from `extensions/` (built-in and drop-in folders) and from installed packages that "
        "declare an `easel.extensions` entry point. A failing extension is listed here and skipped; "
        "the rest of Easel keeps working. Easel never installs an extension's requirements by itself."
    )
    table = gr.Dataframe(
        value=extension_rows(ui),
        headers=["Name", "Origin", "Status", "Description", "Requirements", "Error"],
        interactive=False,
        wrap=True,
        elem_id="extensions-table",
    )
    refresh = gr.Button("Refresh")
    refresh.click(lambda: extension_rows(ui), outputs=table, api_name="extensions")


@hookimpl
def register_tabs(register):
    """The Extensions tab, after the feature tabs."""
    register(Tab(id="extensions", label="Extensions", render=render_extensions_tab, order=900))
