"""Models page: the local checkpoints, LoRAs and VAEs; downloads from a URL or the hub; export to one file.

For the user who has a browser and nothing else (Colab, a LAN box): see what is in
``models/`` (size, family, SHA-256, where it came from), download a model into the right
folder with a progress bar and its SHA-256 (checked when given), and export a diffusers
folder (a full fine-tune above all) as one original-layout ``.safetensors`` checkpoint that
AUTOMATIC1111, Forge and ComfyUI load. When a download or an export ends, the model lists of
txt2img, img2img and Background show the new model.

Built on the public API only (``webui.api`` 2.0): ``ExtensionContext.local_models``,
``download_model``, ``export_model``, ``UIContext.refresh_model_lists_after``.
"""

from __future__ import annotations

from typing import Any

from webui.api import (
    MODEL_KINDS,
    DownloadError,
    DownloadProgress,
    EaselError,
    Tab,
    UIContext,
    format_size,
    hookimpl,
)

EASEL_API_VERSION = "2.0"
HEADERS = ["Kind", "Name", "Size", "Family", "SHA-256", "Origin"]
NOT_HASHED = "(Refresh computes it)"
KIND_LABELS = {"checkpoint": "Checkpoint (Stable-diffusion/)", "lora": "LoRA (Lora/)", "vae": "VAE (VAE/)"}


def model_rows(ui: UIContext, compute_hashes: bool = True) -> list[list[str]]:
    """One row per local model: kind, name (``/`` marks a diffusers folder), size, family, SHA-256, origin.

    Without ``compute_hashes`` (when a page opens) a hash not computed before shows as
    "(Refresh computes it)": reading every large file on each page load would hold the page.
    """
    return [[row.kind, row.name + ("/" if row.is_folder else ""), format_size(row.size_bytes), row.family or "?",
             row.sha256 or NOT_HASHED, row.origin.describe() if row.origin else "local file"]
            for row in ui.context.local_models(compute_hashes=compute_hashes)]


def folder_choices(ui: UIContext) -> list[tuple[str, str]]:
    """The listed models that are local diffusers folders (what can be exported to one file)."""
    return [(source.display_name, source.name) for source in ui.context.list_models() if source.kind == "folder"]


def download_note(ui: UIContext) -> str:
    """Why downloading is off on this server, or an empty string."""
    policy = ui.context.download_policy
    if policy is None:
        return ""
    try:
        policy.check_may_download()
    except DownloadError as exc:
        return f"**{exc}**"
    return ""


def progress_line(progress: DownloadProgress) -> str:
    done = format_size(progress.done_bytes)
    if progress.total_bytes:
        return f"{progress.filename}: {done} of {format_size(progress.total_bytes)}"
    return f"{progress.filename}: {done}"


def render_models_tab(ui: UIContext) -> None:
    """The listing, the download form and the export form."""
    import gradio as gr

    context = ui.context
    gr.Markdown("The models in `models/`: checkpoints and diffusers folders in `Stable-diffusion/`, LoRAs in "
                "`Lora/`, VAEs in `VAE/`. The SHA-256 is of the file (of the UNet / transformer weights for a "
                "folder); AUTOMATIC1111 shows its first 10 digits.")
    table = gr.Dataframe(value=[], headers=HEADERS, interactive=False, wrap=True, elem_id="models-table")
    refresh = gr.Button("Refresh (computes missing hashes)", elem_id="models-refresh")

    with gr.Accordion("Download a model", open=True):
        gr.Markdown("An `https://` URL, or a hub id `owner/name`: with a file name, that one file; without, the "
                    "whole diffusers repository. Only `.safetensors` files unless Easel was started with "
                    "`--allow-pickle`. An interrupted download continues where it stopped when started again.")
        note = download_note(ui)
        if note:
            gr.Markdown(note, elem_id="models-download-off")
        with gr.Row():
            source = gr.Textbox(label="URL or hub id", placeholder="https://…/model.safetensors  or  owner/name",
                                scale=4, elem_id="models-source")
            kind = gr.Radio(choices=[(KIND_LABELS.get(k, k), k) for k in MODEL_KINDS], value="checkpoint",
                            label="Kind", scale=2, elem_id="models-kind")
        with gr.Row():
            filename = gr.Textbox(label="File name (optional; for a hub id: the file in the repository)",
                                  elem_id="models-filename")
            expected = gr.Textbox(label="Expected SHA-256 (optional; checked)", elem_id="models-sha256")
        download = gr.Button("Download", variant="primary", elem_id="models-download")
        download_status = gr.Markdown("", elem_id="models-download-status")

    with gr.Accordion("Export to one .safetensors checkpoint", open=True):
        gr.Markdown("Writes a diffusers folder (a full fine-tune, say) as one original-layout checkpoint in "
                    "`Stable-diffusion/` that AUTOMATIC1111, Forge and ComfyUI load; its configs go beside it in "
                    "`<name>.config/` so that Easel loads it offline too.")
        with gr.Row():
            folder_model = ui.register_model_list(
                gr.Dropdown(choices=folder_choices(ui), value=None, label="Diffusers folder", scale=3,
                            elem_id="models-export-model"), lambda: folder_choices(ui))
            output_name = gr.Textbox(label="File name (default: the model's name)", scale=2,
                                     elem_id="models-export-name")
            half = gr.Checkbox(value=False, label="fp16 weights (half the size)", elem_id="models-export-half")
        export = gr.Button("Export", elem_id="models-export")
        export_status = gr.Markdown("", elem_id="models-export-status")

    def list_models() -> list[list[str]]:
        """The local models table (API: ``models_list``)."""
        return model_rows(ui)

    def download_model(source_value: str, kind_value: str, filename_value: str, sha256_value: str,
                       progress=gr.Progress()) -> tuple[str, Any]:
        """Download a model (API: ``models_download``); returns the status line with the SHA-256, and the table."""
        if not (source_value or "").strip():
            raise gr.Error("Give a URL or a hub id", print_exception=False)

        def report(update: DownloadProgress) -> None:
            progress(update.fraction, desc=progress_line(update))

        try:
            result = context.download_model(source_value, kind_value, filename=filename_value, sha256=sha256_value,
                                            progress=report)
        except DownloadError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        checked = " (matches the expected hash)" if (sha256_value or "").strip() else ""
        line = (f"Downloaded **{result.path.name}** into `{result.path.parent.name}/` · "
                f"{format_size(result.size_bytes)} · SHA-256 `{result.sha256}`{checked}")
        if result.resumed_bytes:
            line += f" · resumed after {format_size(result.resumed_bytes)}"
        return line, model_rows(ui)

    def export_model(name: str, output: str, half_value: bool) -> tuple[str, Any]:
        """Export a diffusers folder as one checkpoint (API: ``models_export``)."""
        if not name:
            raise gr.Error("Pick a diffusers folder to export", print_exception=False)
        try:
            path = context.export_model(name, output, half=bool(half_value))
        except EaselError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        size = format_size(path.stat().st_size)
        return f"Exported **{path.name}** to `Stable-diffusion/` · {size}", model_rows(ui)

    refresh.click(list_models, outputs=table, api_name="models_list")
    ui.on_page_load(lambda: model_rows(ui, compute_hashes=False), outputs=table, api_name=False)
    downloaded = download.click(download_model, inputs=[source, kind, filename, expected],
                                outputs=[download_status, table], api_name="models_download")
    ui.refresh_model_lists_after(downloaded)
    exported = export.click(export_model, inputs=[folder_model, output_name, half], outputs=[export_status, table],
                            api_name="models_export")
    ui.refresh_model_lists_after(exported)


@hookimpl
def register_tabs(register):
    """The Models tab, after Train."""
    register(Tab(id="models", label="Models", render=render_models_tab, order=50))
