"""The Gradio Blocks shell: a header, the tabs extensions register, and the Settings tab."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from webui import __version__
from webui.api import Tab, UIContext
from webui.context import EaselContext

log = logging.getLogger(__name__)

CSS = """
#easel-header h1 {margin-bottom: 0}
.easel-progress {font-variant-numeric: tabular-nums}
"""


def collect_tabs(context: EaselContext) -> list[Tab]:
    """Tabs from every extension's ``register_tabs``, ordered; bad registrations are reported."""
    tabs: list[Tab] = []

    def register(tab: Tab) -> None:
        if not isinstance(tab, Tab):
            raise TypeError(f"register_tabs expects webui.api.Tab, got {type(tab).__name__}")
        tabs.append(tab)

    context.plugins.call("register_tabs", register=register)
    return sorted(tabs, key=lambda tab: (tab.order, tab.label))


def unavailable_note(key: str, reasons: dict[str, str]) -> str:
    """What of setting ``key`` cannot work on this device, each reason said once.

    ``reasons`` is :func:`webui.memory.option_availability`'s mapping (``"key"`` for the whole
    setting, ``"key=value"`` for one value). Values sharing a reason are listed together:
    ``Unavailable here: model, sequential, auto — offload needs a GPU: ....``; "" when all works.
    """
    values_by_reason: dict[str, list[str]] = {}
    for option, reason in reasons.items():
        if option == key:
            values_by_reason.setdefault(reason, [])
        elif option.startswith(key + "="):
            values_by_reason.setdefault(reason, []).append(option.split("=", 1)[1])
    if not values_by_reason:
        return ""
    parts = [f"{', '.join(values)} — {reason}" if values else reason for reason, values in values_by_reason.items()]
    return "Unavailable here: " + "; ".join(parts) + "."


def _render_settings(context: EaselContext) -> None:
    specs = context.settings.specs
    if not specs:
        gr.Markdown("No extension declares settings.")
        return
    components: list[tuple[str, Any]] = []
    from webui.memory import option_availability

    reasons = option_availability(context)

    def info(spec) -> str | None:
        """The setting's help plus, for memory options, what is unavailable on this device and why."""
        return " ".join(filter(None, [spec.help, unavailable_note(spec.key, reasons)])) or None

    for section in sorted({spec.section for spec in specs}):
        with gr.Accordion(section, open=True):
            for spec in [s for s in specs if s.section == section]:
                value = context.settings.get(spec.key)
                if spec.kind == "bool":
                    component = gr.Checkbox(value=bool(value), label=spec.label, info=info(spec))
                elif spec.kind == "choice":
                    component = gr.Dropdown(choices=spec.choices, value=value, label=spec.label,
                                            info=info(spec))
                elif spec.kind in ("int", "float"):
                    component = gr.Number(value=value, label=spec.label, info=info(spec),
                                          precision=0 if spec.kind == "int" else None,
                                          minimum=spec.minimum, maximum=spec.maximum)
                else:
                    component = gr.Textbox(value=value, label=spec.label, info=info(spec))
                components.append((spec.key, component))
    status = gr.Markdown()
    save = gr.Button("Apply settings", variant="primary")
    keys = [key for key, _ in components]

    def apply(*values: Any) -> str:
        try:
            context.settings.update(dict(zip(keys, values)))
        except (TypeError, ValueError) as exc:
            raise gr.Error(f"Settings not saved: {exc}") from exc
        context.pipelines.reconfigure()
        return "Settings saved. Models reload with them on next use."

    save.click(apply, inputs=[component for _, component in components], outputs=status, api_name="apply_settings")


def build_blocks(context: EaselContext) -> gr.Blocks:
    """The whole UI. Tabs whose ``render`` raises show the error instead of taking the app down."""
    with gr.Blocks(title="Easel", analytics_enabled=False) as blocks:
        ui = UIContext(context=context.for_extensions, blocks=blocks)
        gr.Markdown(f"# Easel\nStable Diffusion on diffusers · v{__version__}", elem_id="easel-header")
        with gr.Tabs() as tabs:
            ui.tabs = tabs
            for tab in collect_tabs(context):
                with gr.Tab(tab.label, id=tab.id):
                    try:
                        tab.render(ui)
                    except Exception as exc:  # noqa: BLE001 - one broken tab must not break the app
                        log.exception("Tab %s failed to render", tab.id)
                        context.plugins.report_failure(tab.id, "render", exc)
                        gr.Markdown(f"**This tab failed to load:** `{type(exc).__name__}: {exc}`")
            with gr.Tab("Settings", id="settings"):
                _render_settings(context)
        ui.finish_rendering()  # "Send to <tab>" buttons, now that every tab's components exist
    return blocks
