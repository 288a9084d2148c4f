"""Automatic captions for a training dataset: one small interface, three kinds of captioner.

A captioner has a ``name``, a ``label`` (what the UI shows) and ``caption(images, progress)``
returning one caption per image (``progress(done, total)`` is called as it goes):

* :class:`TransformersCaptioner` -- a transformers image-to-text model (BLIP and others that
  ``AutoModelForImageTextToText`` loads) from a hub id or a local folder under
  ``models/Captioning/<name>/``, on the CPU or a GPU;
* :class:`ShapesCaptioner` -- for the offline demo domain: the demo model's classical judge
  (``tools.demo_model.judge``) reads shape, colour, size and position, and the caption is
  written in the demo model's own prompt vocabulary ("a small red circle on a blue background
  on the left"), exactly as its training data was captioned;
* a tiny BLIP with random weights (:func:`write_tiny_blip`), built offline from a config and
  labelled as such: it exercises the local-folder path (written to a temporary folder and
  loaded by :class:`TransformersCaptioner` like a user's folder) and its captions mean nothing.

:func:`captioner_choices` lists what a user can pick, :func:`load_captioner` loads one, and
:func:`caption_dataset` captions a dataset of a :class:`~webui.training.datasets.DatasetStore`
(prefix/suffix, keep or overwrite existing captions).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from PIL import Image

from webui.training.dataset import open_rgb
from webui.training.datasets import DatasetStore

ProgressCallback = Callable[[int, int], None]
CAPTIONING_DIR = "Captioning"  # under the models folder, A1111-style
SHAPES_CAPTIONER = "shapes-demo"
TINY_CAPTIONER = "tiny-random-blip"
HUB_CAPTIONERS = {
    "Salesforce/blip-image-captioning-base": "BLIP base (hub, 990 MB)",
    "Salesforce/blip-image-captioning-large": "BLIP large (hub, 1.9 GB)",
}
DEFAULT_MAX_NEW_TOKENS = 40


class Captioner(Protocol):
    """What every captioner offers."""

    name: str
    label: str

    def caption(self, images: Sequence[Image.Image], progress: ProgressCallback | None = None) -> list[str]:
        """One caption per image, in order; ``progress(done, total)`` after each batch."""


def resolve_device(device: str = "auto") -> str:
    """``auto`` is ``cuda`` when a GPU is there, else ``cpu``; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TransformersCaptioner:
    """An image-to-text transformers model (processor + ``generate``) as a captioner.

    ``prompt`` is text given to the model with every image (BLIP continues it, e.g. "a picture
    of"); the prompt is taken off the front of the answer. Load with :meth:`load`.
    """

    name: str
    label: str
    model: object = field(repr=False)
    processor: object = field(repr=False)
    device: str = "cpu"
    location: str = ""
    prompt: str = ""
    batch_size: int = 8
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @classmethod
    def load(cls, location: str | os.PathLike, name: str | None = None, label: str | None = None,
             device: str = "auto", prompt: str = "") -> "TransformersCaptioner":
        """Load a hub id or a local folder (``config.json`` + processor files) onto ``device``.

        On a GPU the weights are half precision; on the CPU full precision. A local folder never
        touches the network.
        """
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        location = str(location)
        local = Path(location).is_dir()
        device = resolve_device(device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        processor = AutoProcessor.from_pretrained(location, local_files_only=local)
        model = AutoModelForImageTextToText.from_pretrained(location, local_files_only=local, dtype=dtype)
        model.to(device).eval()
        return cls(name=name or location, label=label or location, model=model, processor=processor, device=device,
                   location=location, prompt=prompt)

    def caption(self, images: Sequence[Image.Image], progress: ProgressCallback | None = None) -> list[str]:
        """Caption ``images`` in batches of :attr:`batch_size` with greedy decoding."""
        import torch

        captions: list[str] = []
        total = len(images)
        dtype = next(self.model.parameters()).dtype
        for start in range(0, total, self.batch_size):
            batch = [image.convert("RGB") for image in images[start:start + self.batch_size]]
            kwargs = {"images": batch, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(batch)
            inputs = self.processor(**kwargs).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            for text in self.processor.batch_decode(output, skip_special_tokens=True):
                text = " ".join(text.split())
                if self.prompt and text.lower().startswith(self.prompt.lower()):
                    text = text[len(self.prompt):].strip()
                captions.append(text)
            if progress is not None:
                progress(len(captions), total)
        return captions


@dataclass
class ShapesCaptioner:
    """Captions demo-domain images (one coloured shape on a plain background) with the demo judge.

    The caption is :meth:`tools.demo_model.shapes.ShapeSpec.caption` of what the judge reads:
    shape, colour, background, size and (for small shapes off the centre) position -- the
    vocabulary the demo model was trained on. An image the judge cannot read fully gets what
    it could read ("a large red shape on a blue background"), or "" when nothing.
    """

    name: str = SHAPES_CAPTIONER
    label: str = "shapes (demo: the demo model's judge reads shape, colour, size, position)"

    def caption(self, images: Sequence[Image.Image], progress: ProgressCallback | None = None) -> list[str]:
        captions = []
        for index, image in enumerate(images):
            captions.append(self.describe(image))
            if progress is not None:
                progress(index + 1, len(images))
        return captions

    @staticmethod
    def describe(image: Image.Image) -> str:
        """The demo-vocabulary caption of one image (see the class docstring)."""
        from tools.demo_model.judge import foreground_mask, judge
        from tools.demo_model.shapes import ShapeSpec

        image = image.convert("RGB")
        verdict = judge(image)
        if verdict.colour is None or verdict.background is None:
            return ""
        position = demo_position(foreground_mask(image)) if verdict.size == "small" else "center"
        spec = ShapeSpec(shape=verdict.shape or "shape", colour=verdict.colour, background=verdict.background,
                         size=verdict.size or "large", position=position)
        return spec.caption(name_position=True)


def demo_position(mask) -> str:
    """The demo domain's position word (``center``, ``left``, ...) nearest to the mask's box centre."""
    import numpy as np

    from tools.demo_model.shapes import POSITIONS

    if not mask.any():
        return "center"
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    centre_x, centre_y = (cols[0] + cols[-1] + 1) / 2 / width, (rows[0] + rows[-1] + 1) / 2 / height
    return min(POSITIONS, key=lambda key: (POSITIONS[key][0] - centre_x) ** 2 + (POSITIONS[key][1] - centre_y) ** 2)


TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "small", "large", "red", "green", "blue",
              "yellow", "circle", "square", "triangle", "star", "on", "the", "background", "left", "right"]


def write_tiny_blip(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random-weight BLIP captioner (model + processor) to ``folder``, offline; returns it.

    Its captions are random words: it exists to test the transformers path without a download.
    """
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(folder)
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(TINY_WORDS)})
    config = BlipConfig(
        text_config=dict(vocab_size=len(TINY_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32, bos_token_id=2,
                         sep_token_id=3, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8))
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "easel_tiny.json").write_text(json.dumps({"random_weights": True}), encoding="utf-8")
    return folder


@dataclass(frozen=True)
class CaptionerChoice:
    """One pickable captioner: ``name`` (what the API takes), ``label`` (what the UI shows), where it is."""

    name: str
    label: str
    kind: str  # "shapes", "tiny", "transformers"
    location: str = ""


def captioner_choices(models_dir: str | os.PathLike) -> list[CaptionerChoice]:
    """The captioners a user can pick: the demo shapes one, the tiny random one, local folders, hub ids."""
    choices = [
        CaptionerChoice(SHAPES_CAPTIONER, ShapesCaptioner.label, "shapes"),
        CaptionerChoice(TINY_CAPTIONER, "tiny BLIP (random weights, offline test - captions are meaningless)", "tiny"),
    ]
    folder = Path(models_dir) / CAPTIONING_DIR
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "config.json").is_file():
                choices.append(CaptionerChoice(f"{CAPTIONING_DIR}/{path.name}", f"{path.name} (local)", "transformers",
                                               str(path)))
    for hub_id, label in HUB_CAPTIONERS.items():
        choices.append(CaptionerChoice(hub_id, label, "transformers", hub_id))
    return choices


def load_captioner(name: str, models_dir: str | os.PathLike, device: str = "auto") -> Captioner:
    """Load the captioner ``name`` (one of :func:`captioner_choices`); ValueError for an unknown name."""
    for choice in captioner_choices(models_dir):
        if choice.name == name:
            break
    else:
        raise ValueError(f"Unknown captioner {name!r}; choose one of: "
                         + ", ".join(c.name for c in captioner_choices(models_dir)))
    if choice.kind == "shapes":
        return ShapesCaptioner()
    if choice.kind == "tiny":
        with tempfile.TemporaryDirectory(prefix="easel-tiny-blip-") as folder:
            return TransformersCaptioner.load(write_tiny_blip(folder), name=choice.name, label=choice.label,
                                              device=device)
    try:
        return TransformersCaptioner.load(choice.location, name=choice.name, label=choice.label, device=device)
    except OSError as exc:
        raise ValueError(f"Could not load {choice.name}: {exc}. Offline, put a copy of the model under "
                         f"{Path(models_dir) / CAPTIONING_DIR}/<name>/ or pick the shapes (demo) captioner.") from exc


@dataclass
class CaptionReport:
    """What :func:`caption_dataset` did: images captioned and images whose caption was kept."""

    captioned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.captioned)} image(s) captioned, {len(self.kept)} kept their caption"


def join_caption(prefix: str, caption: str, suffix: str) -> str:
    """``prefix, caption, suffix`` with the empty parts left out (the prefix is typically a trigger word)."""
    return ", ".join(part.strip() for part in (prefix, caption, suffix) if part and part.strip())


def caption_dataset(store: DatasetStore, name: str, captioner: Captioner, *, prefix: str = "", suffix: str = "",
                    overwrite: bool = False, progress: ProgressCallback | None = None,
                    batch_size: int = 8) -> CaptionReport:
    """Caption the images of dataset ``name`` with ``captioner`` and store the captions.

    Images that have a caption keep it unless ``overwrite``. Each stored caption is
    :func:`join_caption` of ``prefix``, the model's caption and ``suffix``. ``progress(done,
    total)`` counts the images to caption. Images are read as the trainer reads them (upright
    RGB).
    """
    report = CaptionReport()
    todo = []
    for item in store.images(name):
        if item.caption and not overwrite:
            report.kept.append(item.key)
        else:
            todo.append(item)
    total = len(todo)
    if progress is not None:
        progress(0, total)
    for start in range(0, total, batch_size):
        batch = todo[start:start + batch_size]
        captions = captioner.caption([open_rgb(item.path) for item in batch])
        store.set_captions(name, {item.key: join_caption(prefix, text, suffix) for item, text in zip(batch, captions)})
        report.captioned.extend(item.key for item in batch)
        if progress is not None:
            progress(len(report.captioned), total)
    return report
