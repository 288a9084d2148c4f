"""PNG Info: drop an image, read the generation parameters it carries, send them to txt2img.

Reads Easel's and AUTOMATIC1111's infotext (the PNG ``parameters`` chunk, or the EXIF
UserComment of a JPEG/WebP) into fields, lists the image's other text chunks (ComfyUI's
``prompt``/``workflow``, a ``comment``, ...), and "Send to txt2img" fills txt2img's prompt (with
``<lora:name:weight>`` tags for the LoRAs the image used), negative prompt, model (when it is
listed here), sampler and schedule type, steps, CFG scale, seed and size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from webui.api import Tab, UIContext, hookimpl, parse_infotext, picked_image, read_image_text, resolve_sampler

EASEL_API_VERSION = "2.0"

INFOTEXT_KEYS = ("parameters", "EXIF UserComment")
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>")


@dataclass
class ImageInfo:
    """What one dropped file holds: the infotext split into fields, and its other texts."""

    summary: str                                       # "PNG, 128x128, RGB" or why it cannot be read
    infotext: str = ""                                 # the raw parameters text ("" when none)
    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)
    other_texts: dict[str, str] = field(default_factory=dict)
    readable: bool = True                              # False: not an image Pillow can open

    @property
    def has_parameters(self) -> bool:
        return bool(self.infotext.strip())


def describe_image(path: str | Path) -> ImageInfo:
    """Open ``path`` and read everything it says about how it was made (never raises for bad files)."""
    from PIL import Image, UnidentifiedImageError

    name = Path(path).name
    try:
        with Image.open(path) as image:
            image.load()
            texts = read_image_text(image)
            summary = f"{image.format or 'image'}, {image.width}x{image.height}, {image.mode}"
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        return ImageInfo(summary=f"{name} is not an image this server can read ({type(exc).__name__}: {exc}).",
                         readable=False)
    infotext_key = next((key for key in INFOTEXT_KEYS if texts.get(key, "").strip()), None)
    infotext = texts.pop(infotext_key) if infotext_key else ""
    prompt, negative, params = parse_infotext(infotext)
    return ImageInfo(summary=summary, infotext=infotext, prompt=prompt, negative_prompt=negative, params=params,
                     other_texts=texts)


def _lora_weights(params: dict[str, str]) -> dict[str, str]:
    """LoRA name -> weight from Easel's ``Lora weights`` (``name: 0.8, other: 1``), else names from
    ``Lora hashes`` (A1111; weight 1)."""
    weights: dict[str, str] = {}
    for key, default in (("Lora weights", None), ("Lora hashes", "1")):
        for part in (params.get(key) or "").split(","):
            name, _, value = part.partition(":")
            name = name.strip()
            if name and name not in weights:
                weights[name] = default or value.strip() or "1"
        if weights:
            break
    return weights


def prompt_with_lora_tags(prompt: str, params: dict[str, str]) -> str:
    """The prompt plus a ``<lora:name:weight>`` tag for each LoRA the infotext lists that the
    prompt does not tag already (Easel takes the tags out of the prompt it records; A1111 keeps them)."""
    tagged = {match.group(1).strip() for match in LORA_TAG.finditer(prompt)}
    tags = [f"<lora:{name}:{weight}>" for name, weight in _lora_weights(params).items() if name not in tagged]
    return " ".join(filter(None, [prompt.rstrip(), *tags]))


def _match_model(name: str, model_names: list[str]) -> str | None:
    """The listed model an infotext's ``Model`` names (exact, then without a file suffix, any case)."""
    if not name:
        return None
    if name in model_names:
        return name
    wanted = name.strip().lower()
    for listed in model_names:
        stem = listed.rsplit(".", 1)[0] if listed.lower().endswith((".safetensors", ".ckpt")) else listed
        if wanted in (listed.lower(), stem.lower(), Path(listed).name.lower()):
            return listed
    return None


def txt2img_values(info: ImageInfo, model_names: list[str],
                   family_of: Callable[[str], str | None]) -> tuple[dict[str, Any], list[str]]:
    """The txt2img fields "Send to txt2img" fills from ``info``, and notes on what it could not use."""
    if not info.has_parameters:
        return {}, []
    params = info.params
    values: dict[str, Any] = {"prompt": prompt_with_lora_tags(info.prompt, params),
                              "negative_prompt": info.negative_prompt}
    notes: list[str] = []
    model = _match_model(params.get("Model", ""), model_names)
    if model:
        values["model"] = model
    elif params.get("Model"):
        notes.append(f"model {params['Model']} is not listed here: txt2img keeps its model")
    if params.get("Sampler"):
        family = (family_of(model) if model else None) or "sd1"
        try:
            values["sampler"], values["schedule_type"] = resolve_sampler(
                params["Sampler"], params.get("Schedule type") or "Automatic", family)
        except ValueError:
            notes.append(f"sampler {params['Sampler']} ({params.get('Schedule type') or 'Automatic'}) does not "
                         f"work with {family} models here: txt2img keeps its sampler")
    for key, target, kind in (("Steps", "steps", int), ("CFG scale", "cfg_scale", float), ("Seed", "seed", int)):
        if key in params:
            try:
                values[target] = kind(float(params[key])) if kind is int else kind(params[key])
            except ValueError:
                notes.append(f"{key} {params[key]!r} is not a number")
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", params.get("Size", ""))
    if size:
        values["width"], values["height"] = int(size.group(1)), int(size.group(2))
    elif params.get("Size"):
        notes.append(f"Size {params['Size']!r} is not WIDTHxHEIGHT")
    return values, notes


FIELD_LABELS = {"prompt": "prompt", "negative_prompt": "negative prompt", "model": "model", "sampler": "sampler",
                "schedule_type": "schedule type", "steps": "steps", "cfg_scale": "CFG scale", "seed": "seed",
                "width": "width", "height": "height"}


def status_text(info: ImageInfo, values: dict[str, Any], notes: list[str]) -> str:
    """The line above the fields: what the file is, and what Send to txt2img will do."""
    if not info.readable:
        return info.summary
    if not info.has_parameters:
        found = f" It has other text: {', '.join(info.other_texts)}." if info.other_texts else ""
        return (f"{info.summary}. No generation parameters in this image (no PNG `parameters` chunk, no EXIF "
                f"UserComment); a copy saved by a browser, a chat app or an editor usually loses them.{found}")
    sent = ", ".join(FIELD_LABELS[key] for key in values)
    text = f"{info.summary}. Send to txt2img sets: {sent}."
    if notes:
        text += " Not sent: " + "; ".join(notes) + "."
    return text


def render_png_info_tab(ui: UIContext) -> None:
    """The drop zone, the parameters as fields and raw text, other text chunks, Send to txt2img."""
    import gradio as gr

    context = ui.context
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Drop an image (PNG, JPEG, WebP)", file_types=["image"], type="filepath",
                             elem_id="png-info-file")
            preview = gr.Image(label="Image", interactive=False, height=320, elem_id="png-info-image")
        with gr.Column(scale=2):
            status = gr.Markdown("Drop an image to read its generation parameters.", elem_id="png-info-status")
            with gr.Row():
                send = gr.Button("Send to txt2img", variant="primary", interactive=False,
                                 elem_id="png-info-send-txt2img")
                send_img2img = gr.Button("Send to img2img", interactive=False, elem_id="png-info-send-img2img")
            prompt = gr.Textbox(label="Prompt", lines=3, interactive=False, elem_id="png-info-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, interactive=False, elem_id="png-info-negative")
            fields = gr.Dataframe(headers=["Parameter", "Value"], value=[], interactive=False, wrap=True,
                                  elem_id="png-info-fields")
            raw = gr.Textbox(label="Parameters as stored", lines=4, interactive=False, elem_id="png-info-text")
            other = gr.Textbox(label="Other text in the file", lines=3, interactive=False, elem_id="png-info-other")
    values_state = gr.State({})

    def read(path: str | None):
        """Everything the tab shows for the dropped file (cleared when the file is removed)."""
        if not path:
            return (None, "Drop an image to read its generation parameters.", "", "", [], "", "", {},
                    gr.update(interactive=False), gr.update(interactive=False))
        info = describe_image(path)
        model_names = [source.name for source in context.list_models()]
        values, notes = txt2img_values(info, model_names, context.family_of)
        other_text = "\n\n".join(f"{key}:\n{text}" for key, text in info.other_texts.items())
        return (path if info.readable else None, status_text(info, values, notes), info.prompt, info.negative_prompt,
                [[key, value] for key, value in info.params.items()], info.infotext, other_text, values,
                gr.update(interactive=bool(values)), gr.update(interactive=bool(values) and info.readable))

    ui.share_fields("png_info", {"file": upload})  # the galleries' "Send to PNG Info" drops a file here
    upload.change(read, inputs=upload,
                  outputs=[preview, status, prompt, negative, fields, raw, other, values_state, send, send_img2img],
                  api_name="png_info", queue=False)
    ui.send_to("txt2img", send, lambda values: values or None, inputs=values_state)

    def to_img2img(values: dict, path: str | None):
        """The parameters and the picture itself, as img2img's starting image."""
        if not values or not path:
            return None
        return {**values, "init_image": picked_image(path)}

    ui.send_to("img2img", send_img2img, to_img2img, inputs=[values_state, upload])


@hookimpl
def register_tabs(register):
    """The PNG Info tab, after the feature tabs, before Extensions."""
    register(Tab(id="png_info", label="PNG Info", render=render_png_info_tab, order=800))
