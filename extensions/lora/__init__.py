"""LoRA: use LoRA files from ``models/Lora/`` in txt2img, several at once, with a weight each.

* A picker in txt2img (``lora.names``: a multi-select of the files in ``models/Lora/``, and
  ``lora.weights``: one weight per picked LoRA, comma-separated, 1.0 when left out).
* AUTOMATIC1111's prompt syntax ``<lora:name:0.8>`` (weight optional, default 1.0); the tags
  are taken out of the prompt before it is encoded.
* Files are loaded as peft adapters with diffusers' ``load_lora_weights`` (kohya-format and
  diffusers/peft-format files alike; diffusers converts kohya keys itself) and combined with
  ``set_adapters``. After the job they are deleted again, so the next job without LoRA gives
  the base image bit for bit.
* The infotext gets ``Lora hashes: "name: hash, ..."`` as A1111 writes it (the "addnet"
  hash: SHA-256 of the file after its safetensors header, first 12 hex digits).

Only files inside the models folder's ``Lora/`` are ever opened: names are looked up in the
listing, never used as paths.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import Any

from webui.api import LORA_TAG, Control, ExtensionError, hookimpl, list_lora_files

EASEL_API_VERSION = "2.0"

TAG = LORA_TAG
STATE_KEY = "lora"


def hash_cache(context) -> dict[tuple[str, int, int], str]:
    """This app's LoRA hashes (``context.extension_state["lora"]``): (path, size, mtime) -> SHA-256."""
    return context.extension_state.setdefault(STATE_KEY, {}).setdefault("hashes", {})


def lora_dir(models_dir: Path | str) -> Path:
    """The LoRA folder of a models folder (A1111 layout)."""
    return Path(models_dir) / "Lora"


def list_loras(models_dir: Path | str) -> dict[str, Path]:
    """``{name: path}`` of every LoRA file under ``models/Lora/`` (name = file stem, as A1111)."""
    return list_lora_files(models_dir)


def addnet_hash(path: Path, cache: dict[tuple[str, int, int], str] | None = None) -> str:
    """A1111's LoRA hash: SHA-256 of the tensor data after the safetensors header.

    With ``cache`` (:func:`hash_cache`), a file whose path, size and modification time are
    unchanged is not read again.
    """
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache is not None and key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = struct.unpack("<Q", handle.read(8))[0]
        handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if cache is not None:
        cache[key] = digest.hexdigest()
    return digest.hexdigest()


def parse_weight(text: Any, default: float = 1.0) -> float:
    if text is None or str(text).strip() == "":
        return default
    try:
        return float(text)
    except ValueError:
        raise ExtensionError(f"LoRA weight {text!r} is not a number") from None


def take_prompt_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove ``<lora:name:weight>`` tags from a prompt; returns the clean prompt and the tags."""
    tags = [(match.group(1).strip(), parse_weight(match.group(2))) for match in TAG.finditer(prompt or "")]
    cleaned = TAG.sub("", prompt or "")
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
    cleaned = re.sub(r"\s*,\s*(,\s*)+", ", ", cleaned).strip().strip(",").strip()
    return cleaned, tags


def picked_loras(extras: dict[str, Any]) -> list[tuple[str, float]]:
    """The LoRAs picked in the txt2img controls (or set by REST callers in ``extras``)."""
    names = extras.get("lora.names") or []
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    weights_text = extras.get("lora.weights")
    if isinstance(weights_text, (list, tuple)):
        weights = [parse_weight(w) for w in weights_text]
    else:
        weights = [parse_weight(w) for w in str(weights_text or "").split(",") if w.strip()]
    return [(name, weights[i] if i < len(weights) else 1.0) for i, name in enumerate(names)]


def adapter_name(name: str) -> str:
    return "easel_lora_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


@hookimpl
def register_generation_controls(register, tab_id):
    """The LoRA picker (names + weights) in txt2img and img2img."""
    if tab_id not in ("txt2img", "img2img"):
        return

    def render_names(ui):
        import gradio as gr

        def choices():
            return sorted(list_loras(ui.context.models_dir))

        dropdown = gr.Dropdown(choices=choices(), value=[], multiselect=True, label="LoRA",
                               info="Files in models/Lora/; <lora:name:weight> in the prompt works too",
                               elem_id=f"{tab_id}-lora-names",
                               allow_custom_value=True)  # LoRAs trained after start-up; checked on use
        dropdown.focus(lambda current: gr.update(choices=choices(), value=current), inputs=dropdown,
                       outputs=dropdown, api_name=False, queue=False)
        return dropdown

    def render_weights(ui):
        import gradio as gr

        return gr.Textbox(value="", label="LoRA weights", placeholder="1.0, 0.6 (one per LoRA, in order)",
                          elem_id=f"{tab_id}-lora-weights")

    register(Control(key="lora.names", render=render_names, order=50))
    register(Control(key="lora.weights", render=render_weights, order=51))


@hookimpl
def before_generation(request, model, context):
    """Take ``<lora:...>`` tags out of the prompt and load the LoRAs of this job as adapters."""
    request.prompt, tags = take_prompt_tags(request.prompt)
    wanted: dict[str, float] = {}
    for name, weight in picked_loras(request.extras) + tags:
        wanted[name] = weight  # a prompt tag overrides the picker for the same LoRA
    if not wanted:
        return
    available = list_loras(context.models_dir)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ExtensionError(f"LoRA not found in {lora_dir(context.models_dir)}: {', '.join(missing)}")
    pipe = model.pipeline
    if not hasattr(pipe, "load_lora_weights"):
        raise ExtensionError(f"{model.family} pipelines cannot load LoRA files")
    state = model.extension_state.setdefault(STATE_KEY, {"adapters": [], "used": []})
    adapters, weights, used = [], [], []
    for name, weight in wanted.items():
        path = available[name]
        adapter = adapter_name(name)
        try:
            pipe.load_lora_weights(str(path), adapter_name=adapter)
        except Exception as exc:  # noqa: BLE001 - an unreadable or foreign file: say which
            raise ExtensionError(f"Could not load LoRA {name} ({path.name}) into a {model.family} model: "
                                 f"{type(exc).__name__}: {exc}") from exc
        state["adapters"].append(adapter)
        adapters.append(adapter)
        weights.append(float(weight))
        used.append((name, addnet_hash(path, hash_cache(context))[:12], float(weight)))
    pipe.set_adapters(adapters, adapter_weights=weights)
    state["used"] = used


@hookimpl
def infotext_fields(request, model):
    """``Lora hashes`` as A1111 writes it, for the LoRAs of this job."""
    used = model.extension_state.get(STATE_KEY, {}).get("used") or []
    if not used:
        return None
    return {
        "Lora hashes": ", ".join(f"{name}: {digest}" for name, digest, _ in used),
        "Lora weights": ", ".join(f"{name}: {weight:g}" for name, _, weight in used),
    }


@hookimpl
def after_generation(request, model, result):
    """Delete this job's adapters so the next job starts from the bare base model."""
    state = model.extension_state.get(STATE_KEY)
    if not state or not state.get("adapters"):
        return
    adapters, state["adapters"], state["used"] = state["adapters"], [], []
    pipe = model.pipeline
    if pipe is None:
        return
    try:
        pipe.delete_adapters(adapters)
    except Exception:  # noqa: BLE001 - one failed half-way: remove what is there, one by one
        for adapter in adapters:
            try:
                pipe.delete_adapters([adapter])
            except Exception:  # noqa: BLE001
                pass
