"""The Train tab's Dataset section: make and edit a dataset from the browser, written only against webui.api.

Upload images (several files) or one ``.zip`` to create a dataset under the datasets folder;
see it as a grid of images with their captions; pick an image to edit its caption or delete
it; add a trigger word to every caption; rename the dataset; download it as a ``.zip``; caption
it automatically with a captioner (the demo shapes captioner, a tiny random test model, or a
transformers image-to-text model), with a progress bar.

The section edits the dataset chosen in the tab's "Dataset folder" dropdown and keeps that
dropdown's list up to date. Every event is also an API endpoint (``dataset_create``,
``dataset_caption``, ...). The loaded captioner is kept per app (one at a time) so captioning
again does not reload it.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.api import (
    DatasetError,
    DatasetStore,
    Setting,
    UIContext,
    UploadLimits,
    caption_dataset,
    captioner_choices,
    load_captioner,
)

THUMBNAIL_SIDE = 256
SCOPE = "train.dataset"
MIB = 1024 * 1024


def dataset_settings() -> list[Setting]:
    """The upload limits, in Settings > Training."""
    defaults = UploadLimits()
    return [
        Setting(key="train.upload_max_files", label="Dataset upload: most files (or zip entries)",
                default=defaults.max_files, kind="int", minimum=1, maximum=100_000, section="Training"),
        Setting(key="train.upload_max_file_mib", label="Dataset upload: largest file (MiB)",
                default=defaults.max_file_bytes // MIB, kind="int", minimum=1, maximum=4096, section="Training"),
        Setting(key="train.upload_max_total_mib", label="Dataset upload: most in one upload (MiB)",
                default=defaults.max_total_bytes // MIB, kind="int", minimum=1, maximum=65_536, section="Training",
                help="A .zip counts what it expands to"),
    ]


def upload_limits(context: Any) -> UploadLimits:
    """The :class:`UploadLimits` the app's settings ask for."""
    defaults = UploadLimits()
    files = int(context.setting("train.upload_max_files", defaults.max_files))
    return UploadLimits(max_files=files, max_zip_entries=max(files * 2, files + 10),
                        max_file_bytes=int(context.setting("train.upload_max_file_mib",
                                                           defaults.max_file_bytes // MIB)) * MIB,
                        max_total_bytes=int(context.setting("train.upload_max_total_mib",
                                                            defaults.max_total_bytes // MIB)) * MIB)


@dataclass
class CaptionerCache:
    """The one captioner kept loaded per app: ``(name, device) -> captioner``."""

    key: tuple[str, str] | None = None
    captioner: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self, name: str, models_dir: Path, device: str) -> Any:
        with self.lock:
            if self.key != (name, device):
                self.key, self.captioner = None, None  # free the old one before loading the next
                self.captioner = load_captioner(name, models_dir, device=device)
                self.key = (name, device)
            return self.captioner


def thumbnail(path: Path):
    """A small upright RGB copy of an image for the grid (the file itself is never served)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return image.convert("RGB")


def render_dataset_section(ui: UIContext, dataset_dropdown: Any, cache: CaptionerCache) -> None:
    """Build the Dataset section under the tab's dataset dropdown and wire it to it."""
    import gradio as gr

    context = ui.context

    def store() -> DatasetStore:
        return DatasetStore(context.datasets_dir, upload_limits(context))

    choices = [(choice.label, choice.name) for choice in captioner_choices(context.models_dir)]
    with gr.Accordion("Dataset: upload, captions, edit", open=True, elem_id="dataset-section"):
        with gr.Row():
            upload = gr.File(file_count="multiple", file_types=["image", ".zip", ".txt", ".jsonl"],
                             label="Images (with .txt captions) or one .zip", elem_id="dataset-upload", scale=3)
            with gr.Column(scale=2):
                new_name = gr.Textbox(label="New dataset name", placeholder="my_shapes", elem_id="dataset-new-name")
                create = gr.Button("Create dataset", variant="primary", elem_id="dataset-create")
        status = gr.Markdown("", elem_id="dataset-status")
        gallery = gr.Gallery(label="Images and captions (pick one to edit)", columns=6, height="auto",
                             allow_preview=False, interactive=False, elem_id="dataset-gallery")
        keys = gr.State([])
        selected = gr.State("")
        with gr.Row():
            caption = gr.Textbox(label="Caption of the picked image", elem_id="dataset-caption", scale=4)
            save_caption = gr.Button("Save caption", elem_id="dataset-save-caption", scale=0, min_width=120)
            delete = gr.Button("Delete image", variant="stop", elem_id="dataset-delete", scale=0, min_width=120)
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word", placeholder="sks", elem_id="dataset-trigger", scale=2)
            trigger_where = gr.Radio(choices=["front", "back"], value="front", label="Put it at the",
                                     elem_id="dataset-trigger-where")
            add_trigger = gr.Button("Add to every caption", elem_id="dataset-add-trigger", scale=0, min_width=160)
            rename_to = gr.Textbox(label="Rename dataset to", elem_id="dataset-rename-to", scale=2)
            rename = gr.Button("Rename", elem_id="dataset-rename", scale=0, min_width=100)
            download = gr.Button("Download .zip", elem_id="dataset-download", scale=0, min_width=120)
        zip_file = gr.File(label="Dataset .zip", interactive=False, visible=True, elem_id="dataset-zip")
        with gr.Row():
            captioner = gr.Dropdown(choices=choices, value=choices[0][1], label="Captioner",
                                    elem_id="dataset-captioner", scale=3)
            device = gr.Radio(choices=["auto", "cpu", "cuda"], value="auto", label="Captioner device")
            prefix = gr.Textbox(label="Prefix", elem_id="dataset-prefix", scale=1)
            suffix = gr.Textbox(label="Suffix", elem_id="dataset-suffix", scale=1)
            overwrite = gr.Checkbox(value=False, label="Overwrite existing captions", elem_id="dataset-overwrite")
            auto_caption = gr.Button("Caption automatically", elem_id="dataset-auto-caption", scale=0, min_width=160)

    def fail(exc: Exception):
        raise gr.Error(str(exc), print_exception=False) from None

    def grid(name: str | None, pick: str = ""):
        """The gallery items, their keys, the picked key (kept when still there) and its caption."""
        if not name or name not in store().names():
            return [], [], "", ""
        items = store().images(name)
        shown = [(thumbnail(item.path), f"{item.key}: {item.effective_caption or '(no caption)'}") for item in items]
        keys_now = [item.key for item in items]
        picked = pick if pick in keys_now else ""
        return shown, keys_now, picked, next((item.caption for item in items if item.key == picked), "")

    def show(name: str | None, message: str = "", pick: str = ""):
        """Gallery, keys, status line, the picked key and its caption for dataset ``name``."""
        shown, keys_now, picked, picked_caption = grid(name, pick)
        if not message and keys_now:
            message = f"`{name}`: {len(keys_now)} image(s)"
        return shown, keys_now, message, picked, picked_caption

    view = [gallery, keys, status, selected, caption]

    def dataset_list(value: str | None):
        return gr.update(choices=store().names(), value=value)

    def create_dataset(files: list[str] | None, name: str):
        """Create a dataset from the uploaded files (API: ``dataset_create``)."""
        try:
            report = store().create(name, [Path(f) for f in files or []])
        except DatasetError as exc:
            fail(exc)
        return (dataset_list(report.name), None, "", *show(report.name, report.summary()))

    def pick_image(key_list: list[str], name: str, event):
        index = event.index if isinstance(event.index, int) else 0
        if not name or not 0 <= index < len(key_list):
            return "", ""
        try:
            return key_list[index], store().image(name, key_list[index]).caption
        except DatasetError as exc:
            fail(exc)

    pick_image.__annotations__ = {"event": gr.SelectData}  # Gradio passes the event by its type

    def save(name: str, key: str, text: str):
        """Store the caption of the picked image (API: ``dataset_set_caption``)."""
        if not key:
            fail(DatasetError("Pick an image in the grid first"))
        try:
            store().set_caption(name, key, text)
        except DatasetError as exc:
            fail(exc)
        return show(name, f"Caption of `{key}` saved.", pick=key)

    def remove(name: str, key: str):
        """Delete the picked image and its caption (API: ``dataset_delete_image``)."""
        if not key:
            fail(DatasetError("Pick an image in the grid first"))
        try:
            store().delete_image(name, key)
        except DatasetError as exc:
            fail(exc)
        return show(name, f"`{key}` deleted.")

    def trigger_word(name: str, word: str, where: str):
        """Add a trigger word to every caption (API: ``dataset_trigger_word``)."""
        try:
            changed = store().add_trigger_word(name, word, where)
        except DatasetError as exc:
            fail(exc)
        return show(name, f"`{word.strip()}` added to {changed} caption(s) ({where}).")

    def rename_dataset(name: str, new: str):
        """Rename the dataset (API: ``dataset_rename``)."""
        try:
            new = store().rename(name, new)
        except DatasetError as exc:
            fail(exc)
        return (dataset_list(new), "", *show(new, f"Renamed to `{new}`."))

    def export(name: str):
        """The dataset as a .zip to download (API: ``dataset_download``)."""
        try:
            folder = Path(tempfile.mkdtemp(prefix="easel-dataset-"))
            return str(store().export_zip(name, folder / f"{name}.zip"))
        except DatasetError as exc:
            fail(exc)

    def caption_all(name: str, captioner_name: str, device_name: str, prefix_text: str, suffix_text: str,
                    overwrite_all: bool, progress=gr.Progress()):
        """Caption the dataset's images with the chosen captioner (API: ``dataset_caption``)."""
        if not name:
            fail(DatasetError("Pick or create a dataset first"))
        try:
            store().folder(name)
            progress(0, desc="Loading the captioner…")
            chosen = cache.get(captioner_name, context.models_dir, device_name or "auto")
            report = caption_dataset(store(), name, chosen, prefix=prefix_text or "", suffix=suffix_text or "",
                                     overwrite=bool(overwrite_all),
                                     progress=lambda done, total: progress((done, max(total, 1)), desc="Captioning",
                                                                           unit="images"))
        except (DatasetError, ValueError) as exc:
            fail(exc)
        return show(name, f"{report.summary()} with {captioner_name}.")

    create.click(create_dataset, inputs=[upload, new_name], outputs=[dataset_dropdown, upload, new_name, *view],
                 api_name="dataset_create", concurrency_id="dataset_edit")
    # a dataset picked (or made, or renamed): its grid; the status line keeps what the last action said
    dataset_dropdown.change(grid, inputs=dataset_dropdown, outputs=[gallery, keys, selected, caption], api_name=False)
    gallery.select(pick_image, inputs=[keys, dataset_dropdown], outputs=[selected, caption], api_name=False,
                   queue=False)
    save_caption.click(save, inputs=[dataset_dropdown, selected, caption], outputs=view,
                       api_name="dataset_set_caption", concurrency_id="dataset_edit")
    caption.submit(save, inputs=[dataset_dropdown, selected, caption], outputs=view, api_name=False,
                   concurrency_id="dataset_edit")
    delete.click(remove, inputs=[dataset_dropdown, selected], outputs=view, api_name="dataset_delete_image",
                 concurrency_id="dataset_edit")
    add_trigger.click(trigger_word, inputs=[dataset_dropdown, trigger, trigger_where], outputs=view,
                      api_name="dataset_trigger_word", concurrency_id="dataset_edit")
    rename.click(rename_dataset, inputs=[dataset_dropdown, rename_to], outputs=[dataset_dropdown, rename_to, *view],
                 api_name="dataset_rename", concurrency_id="dataset_edit")
    download.click(export, inputs=dataset_dropdown, outputs=zip_file, api_name="dataset_download")
    auto_caption.click(caption_all, inputs=[dataset_dropdown, captioner, device, prefix, suffix, overwrite],
                       outputs=view, api_name="dataset_caption", concurrency_id="captioning",
                       concurrency_limit=1)
