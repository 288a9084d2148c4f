"""Detectors: text prompt -> boxes with labels and scores (Grounding DINO, two backends).

* :class:`TransformersDetector`: transformers' ``GroundingDinoForObjectDetection`` from a hub
  id (``IDEA-Research/grounding-dino-tiny``/``-base``) or a local ``save_pretrained`` folder.
  Its post-processing takes ``threshold=`` (the box threshold) and ``text_threshold=``.
* :class:`GroundingDinoPyDetector`: the original IDEA code (pip package ``groundingdino-py``)
  with an IDEA checkpoint (``groundingdino_swint_ogc.pth``, or ``.safetensors``) and its
  Python config (``GroundingDINO_SwinT_OGC.py``) - the files many users already have from
  other UIs. transformers 5 removed three helpers from ``BertModel`` that this code calls,
  and 5.24 renamed the embeddings' and encoder's cache arguments; :func:`install_bert_shim`
  adds the helpers back (only where missing) and gives groundingdino-py's ``BertModelWarper``
  a forward that uses only what every transformers 5 release accepts.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the image given to ``detect``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.api import match_demo_shapes

from .torch_model import TorchModelHolder

log = logging.getLogger(__name__)

__all__ = ["Detection", "DemoShapesDetector", "TransformersDetector", "GroundingDinoPyDetector", "install_bert_shim",
           "build_tiny_grounding_dino", "build_tiny_groundingdino_py", "clean_prompt"]

TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "an", "the", "of", "and", "in", "on",
              "dog", "cat", "person", "man", "woman", "car", "bird", "red", "green", "blue", "white", "black",
              "square", "circle", "subject", "object", "photo", "background", "sunny", "beach", "sky", "tree"]


@dataclass
class Detection:
    """One detected box: ``(x0, y0, x1, y1)`` pixels, a score in 0..1 and the matched phrase."""

    box: tuple[float, float, float, float]
    score: float
    label: str

    def caption(self, index: int | None = None) -> str:
        prefix = f"#{index} " if index is not None else ""
        return f"{prefix}{self.label or '?'} {self.score:.2f}"

    def scaled(self, factor_x: float, factor_y: float) -> "Detection":
        x0, y0, x1, y1 = self.box
        return Detection((x0 * factor_x, y0 * factor_y, x1 * factor_x, y1 * factor_y), self.score, self.label)


def clean_prompt(prompt: str) -> str:
    """Grounding DINO wants lower case phrases each ending with a period: ``"the dog. a ball."``."""
    phrases = [part.strip() for part in (prompt or "").replace("\n", ".").split(".")]
    phrases = [phrase for phrase in phrases if phrase]
    return " . ".join(phrase.lower() for phrase in phrases) + " ." if phrases else ""


def _bert_tokenizer(words: list[str]):
    from transformers import BertTokenizer

    # transformers 5: BertTokenizer(vocab_file=...) is silently ignored; pass the vocabulary itself.
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, do_lower_case=True)


class TransformersDetector(TorchModelHolder):
    """Grounding DINO through transformers."""

    kind = "transformers"

    def __init__(self, model: Any, processor: Any, name: str = "grounding-dino") -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name

    @classmethod
    def load(cls, location: str, local_only: bool = False) -> "TransformersDetector":
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        processor = AutoProcessor.from_pretrained(location, local_files_only=local_only)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(location, local_files_only=local_only)
        return cls(model, processor, location)

    @torch.inference_mode()
    def detect(self, image: Image.Image, prompt: str, box_threshold: float = 0.35,
               text_threshold: float = 0.25) -> list[Detection]:
        text = clean_prompt(prompt)
        if not text:
            return []
        image = image.convert("RGB")
        inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
        dtype = next(self.model.parameters()).dtype
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[(image.height, image.width)])[0]
        labels = results.get("text_labels", results.get("labels"))
        detections = []
        for box, score, label in zip(results["boxes"].float().cpu().tolist(), results["scores"].float().cpu().tolist(),
                                     labels):
            label = str(label).replace("[SEP]", "").replace("[CLS]", "").strip(" .")
            detections.append(Detection(tuple(_clip_box(box, image.size)), float(score), label))
        return sorted(detections, key=lambda d: -d.score)


class DemoShapesDetector:
    """A demo detector for the offline demo domain (flat coloured shapes on a plain background).

    No weights: the demo model's judge finds each shape and reads its colour, kind and size
    (:func:`webui.api.match_demo_shapes`), and the shapes the prompt names ("the red circle")
    come back as boxes, scored by how well the named shape's template fits (IoU). On photos
    it finds nothing useful -- it is labelled as a demo.
    """

    name = "shapes-demo"

    def to(self, device: Any) -> "DemoShapesDetector":
        return self  # nothing to move: no weights

    def detect(self, image: Image.Image, prompt: str, box_threshold: float = 0.35,
               text_threshold: float = 0.25) -> list[Detection]:
        return [Detection(tuple(float(v) for v in shape.box), shape.score, shape.label)
                for shape in match_demo_shapes(image, prompt) if shape.score >= box_threshold]


def _clip_box(box: list[float], size: tuple[int, int]) -> list[float]:
    width, height = size
    x0, y0, x1, y1 = box
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


# ------------------------------------------------------------------------------------------
# groundingdino-py (the original IDEA code)
# ------------------------------------------------------------------------------------------

_shim_lock = threading.Lock()


def install_bert_shim() -> list[str]:
    """Give ``BertModel`` back what groundingdino-py's ``BertModelWarper`` takes from it.

    transformers 5 removed ``get_extended_attention_mask``, ``invert_attention_mask`` and
    ``get_head_mask`` from ``BertModel``. They are added back with the transformers 4
    semantics (additive ``finfo.min`` masks, no head mask), and only when missing, so an
    older transformers is left exactly as it is. Returns the names that were added.
    """
    from transformers import BertModel

    def get_extended_attention_mask(self, attention_mask, input_shape=None, device=None, dtype=None):
        dtype = dtype or self.dtype
        if attention_mask.dim() == 3:
            extended = attention_mask[:, None, :, :]
        elif attention_mask.dim() == 2:
            extended = attention_mask[:, None, None, :]
        else:
            raise ValueError(f"Wrong shape for attention_mask (shape {tuple(attention_mask.shape)})")
        extended = extended.to(dtype=dtype)
        return (1.0 - extended) * torch.finfo(dtype).min

    def invert_attention_mask(self, encoder_attention_mask):
        extended = encoder_attention_mask[:, None, :, :] if encoder_attention_mask.dim() == 3 \
            else encoder_attention_mask[:, None, None, :]
        extended = extended.to(dtype=self.dtype)
        return (1.0 - extended) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
        if head_mask is not None:
            raise ValueError("head masks are not supported by this compatibility shim")
        return [None] * num_hidden_layers

    added = []
    with _shim_lock:
        for name, function in (("get_extended_attention_mask", get_extended_attention_mask),
                               ("invert_attention_mask", invert_attention_mask), ("get_head_mask", get_head_mask)):
            if not hasattr(BertModel, name):
                setattr(BertModel, name, function)
                added.append(name)
    return added


def _additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 2-D (batch, keys) or 3-D (batch, queries, keys) 0/1 mask as BERT's additive 4-D mask."""
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    else:
        raise ValueError(f"Wrong shape for attention_mask (shape {tuple(mask.shape)})")
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


def bert_warper_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                        **unused):
    """groundingdino-py's ``BertModelWarper.forward`` without the cache arguments.

    The original passes ``past_key_values_length`` to the embeddings and ``past_key_values``
    / ``head_mask`` / ``output_*`` to the encoder, and reads ``past_key_values`` back from
    its output: transformers 5.24 renamed all of those (``cache_length``, ``cache``). Grounding
    DINO never uses a cache, so this forward passes only the arguments every transformers 5
    release takes: ids, positions and token types to the embeddings, the hidden states and
    the additive mask (Grounding DINO's 3-D phrase mask included) to the encoder.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    embedded = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids)
    if attention_mask is None:
        attention_mask = torch.ones(embedded.shape[:2], device=embedded.device)
    hidden = self.encoder(embedded, attention_mask=_additive_attention_mask(attention_mask, embedded.dtype))[0]
    pooled = self.pooler(hidden) if self.pooler is not None else None
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=hidden, pooler_output=pooled)


def install_groundingdino_py_shim() -> None:
    """Make groundingdino-py's text encoder run on this transformers (idempotent)."""
    install_bert_shim()
    from groundingdino.models.GroundingDINO import bertwarper

    with _shim_lock:
        bertwarper.BertModelWarper.forward = bert_warper_forward


def groundingdino_py_available() -> str | None:
    """None when groundingdino-py can be imported, else the reason it cannot."""
    try:
        install_groundingdino_py_shim()
        import groundingdino.models  # noqa: F401
        import groundingdino.util.slconfig  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - report any import failure as the reason
        return (f"groundingdino-py is not usable ({type(exc).__name__}: {exc}); "
                "pip install groundingdino-py==0.4.0 --no-deps addict yapf timm platformdirs matplotlib pycocotools")
    return None


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    return {key[7:] if key.startswith("module.") else key: value for key, value in state.items()}


class GroundingDinoPyDetector(TorchModelHolder):
    """Grounding DINO through groundingdino-py: IDEA checkpoint + its Python config file."""

    kind = "groundingdino-py"

    def __init__(self, model: Any, name: str = "groundingdino-py") -> None:
        self.model = model.eval()
        self.name = name

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, config: str | os.PathLike,
             text_encoder: str | None = None) -> "GroundingDinoPyDetector":
        """Build the model from ``config`` (``GroundingDINO_SwinT_OGC.py``) and load ``checkpoint``.

        ``text_encoder`` overrides the config's ``text_encoder_type`` (``bert-base-uncased``),
        e.g. with a local BERT folder for offline use.
        """
        reason = groundingdino_py_available()
        if reason:
            raise RuntimeError(reason)
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig

        args = SLConfig.fromfile(str(config))
        args.device = "cpu"
        if text_encoder:
            args.text_encoder_type = str(text_encoder)
        model = build_model(args)
        state = _load_checkpoint(Path(checkpoint))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > len(state) // 2:
            raise ValueError(f"{checkpoint} does not match {config}: {len(missing)} weights missing")
        if missing or unexpected:
            log.info("groundingdino-py: %d missing, %d unexpected keys", len(missing), len(unexpected))
        return cls(model, Path(checkpoint).name)

    @torch.inference_mode()
    def detect(self, image: Image.Image, prompt: str, box_threshold: float = 0.35,
               text_threshold: float = 0.25, max_side: int = 800) -> list[Detection]:
        from groundingdino.util.utils import get_phrases_from_posmap

        caption = clean_prompt(prompt)
        if not caption:
            return []
        image = image.convert("RGB")
        scale = min(1.0, max_side / max(image.size))
        work = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.BILINEAR) if scale < 1 else image
        data = torch.from_numpy(np.asarray(work, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        data = ((data - mean) / std)[None].to(self.device, next(self.model.parameters()).dtype)
        outputs = self.model(data, captions=[caption])
        logits = outputs["pred_logits"].float().cpu().sigmoid()[0]
        boxes = outputs["pred_boxes"].float().cpu()[0]
        keep = logits.max(dim=1)[0] > box_threshold
        tokenizer = self.model.tokenizer
        tokenized = tokenizer(caption)
        detections = []
        for logit, box in zip(logits[keep], boxes[keep]):
            phrase = get_phrases_from_posmap(logit > text_threshold, tokenized, tokenizer).replace(".", "").strip()
            cx, cy, w, h = box.tolist()
            pixels = [(cx - w / 2) * image.width, (cy - h / 2) * image.height,
                      (cx + w / 2) * image.width, (cy + h / 2) * image.height]
            detections.append(Detection(tuple(_clip_box(pixels, image.size)), float(logit.max()), phrase))
        return sorted(detections, key=lambda d: -d.score)


# ------------------------------------------------------------------------------------------
# Tiny random-weight models for offline tests
# ------------------------------------------------------------------------------------------


def build_tiny_grounding_dino(seed: int = 0) -> TransformersDetector:
    """A tiny transformers Grounding DINO with random weights: its boxes are meaningless."""
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    tokenizer = _bert_tokenizer(TINY_WORDS)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    # Two decoder layers at least: with one, transformers' box-head weight tying fails.
    config = GroundingDinoConfig(
        backbone_config=backbone.to_dict() | {"model_type": "swin"}, text_config=text.to_dict() | {"model_type": "bert"},
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_feature_levels=4,
        max_text_len=32, encoder_n_points=2, decoder_n_points=2, use_timm_backbone=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}),
        tokenizer=tokenizer)
    return TransformersDetector(model, processor, "tiny-grounding-dino")


def write_tiny_groundingdino_py(folder: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny groundingdino-py setup to ``folder``: ``tiny.pth``, ``tiny_cfg.py`` and a ``bert`` folder.

    The real Swin-T backbone (the smallest the package has) with a 1-layer transformer,
    10 queries and a 1-layer BERT of width 32; random weights. Returns (checkpoint, config).
    """
    from transformers import BertConfig, BertModel

    reason = groundingdino_py_available()
    if reason:
        raise RuntimeError(reason)
    folder = Path(folder)
    (folder / "bert").mkdir(parents=True, exist_ok=True)
    _bert_tokenizer(TINY_WORDS).save_pretrained(folder / "bert")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(BertConfig(vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=300)).save_pretrained(folder / "bert")
    import groundingdino

    config_text = (Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py").read_text()
    replacements = {"enc_layers = 6": "enc_layers = 1", "dec_layers = 6": "dec_layers = 2",
                    "dim_feedforward = 2048": "dim_feedforward = 64", "num_queries = 900": "num_queries = 10",
                    "use_checkpoint = True": "use_checkpoint = False",
                    "use_transformer_ckpt = True": "use_transformer_ckpt = False",
                    '"bert-base-uncased"': repr(str((folder / "bert").resolve()))}
    for old, new in replacements.items():
        if old not in config_text:
            raise RuntimeError(f"unexpected groundingdino-py config: {old!r} not found")
        config_text = config_text.replace(old, new)
    config = folder / "tiny_cfg.py"
    config.write_text(config_text)
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(config))
    args.device = "cpu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(args)
    checkpoint = folder / "tiny.pth"
    torch.save({"model": {key: value.half() if value.is_floating_point() else value
                          for key, value in model.state_dict().items()}}, checkpoint)
    return checkpoint, config


def build_tiny_groundingdino_py(seed: int = 0) -> GroundingDinoPyDetector:
    """The tiny groundingdino-py model, written to a temporary folder, loaded, and the folder removed.

    Loading reads every file (weights, config, the BERT folder) into memory, so nothing is
    left behind in the temporary directory.
    """
    with tempfile.TemporaryDirectory(prefix="easel-tiny-gdpy-") as folder:
        checkpoint, config = write_tiny_groundingdino_py(folder, seed)
        detector = GroundingDinoPyDetector.load(checkpoint, config)
    detector.model.float()
    detector.name = "tiny-groundingdino-py"
    return detector
