"""Segmenters: boxes -> subject mask.

* :class:`SamSegmenter`: SAM (``SamModel``) or SAM 2 (``Sam2Model``) through transformers,
  from a hub id (``facebook/sam-vit-base``, ``facebook/sam2.1-hiera-large``...) or a local
  folder saved with ``save_pretrained``; the kind is read from the folder's ``config.json``.
* :class:`GrabCutSegmenter`: OpenCV's GrabCut initialised from each box; no weights, works
  offline, a fallback when no SAM model is available.

``segment(image, boxes)`` returns one ``bool`` mask at the image's size: the union of the
masks of all boxes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.api import find_demo_shapes

from .masks import boxes_to_mask
from .torch_model import TorchModelHolder

log = logging.getLogger(__name__)

__all__ = ["SamSegmenter", "GrabCutSegmenter", "BoxSegmenter", "build_tiny_sam", "build_tiny_sam2"]

Box = tuple[float, float, float, float]


class SamSegmenter(TorchModelHolder):
    """SAM / SAM 2 from transformers. Keeps its weights on the CPU between jobs."""

    def __init__(self, model: Any, processor: Any, kind: str = "sam", name: str = "sam") -> None:
        self.model = model.eval()
        self.processor = processor
        self.kind = kind
        self.name = name

    @classmethod
    def load(cls, location: str, local_only: bool = False) -> "SamSegmenter":
        """Load from a hub id or a local folder; SAM or SAM 2 decided by its config."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(location, local_files_only=local_only)
        if config.model_type.startswith("sam2"):
            from transformers import Sam2Model, Sam2Processor

            model = Sam2Model.from_pretrained(location, local_files_only=local_only)
            processor = Sam2Processor.from_pretrained(location, local_files_only=local_only)
            return cls(model, processor, "sam2", location)
        if config.model_type == "sam":
            from transformers import SamModel, SamProcessor

            model = SamModel.from_pretrained(location, local_files_only=local_only)
            processor = SamProcessor.from_pretrained(location, local_files_only=local_only)
            return cls(model, processor, "sam", location)
        raise ValueError(f"{location} is a {config.model_type!r} model, not SAM or SAM 2")

    @torch.inference_mode()
    def segment(self, image: Image.Image, boxes: list[Box]) -> np.ndarray:
        """The union of SAM's best mask (by predicted IoU) for each box."""
        image = image.convert("RGB")
        if not boxes:
            return np.zeros((image.height, image.width), dtype=bool)
        inputs = self.processor(images=image, input_boxes=[[list(map(float, box)) for box in boxes]],
                                return_tensors="pt")
        inputs = {key: value.to(self.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        dtype = next(self.model.parameters()).dtype
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        model_inputs = {key: value for key, value in inputs.items()
                        if key not in ("original_sizes", "reshaped_input_sizes")}
        outputs = self.model(**model_inputs, multimask_output=True)
        if self.kind == "sam2":
            masks = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu())
        else:
            masks = self.processor.image_processor.post_process_masks(
                outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())
        per_box = masks[0]  # (boxes, candidates, H, W)
        scores = outputs.iou_scores[0].float().cpu()  # (boxes, candidates)
        result = np.zeros((image.height, image.width), dtype=bool)
        for index in range(per_box.shape[0]):
            best = int(torch.argmax(scores[index]))
            result |= per_box[index, best].numpy().astype(bool)
        return result


class GrabCutSegmenter:
    """OpenCV GrabCut from each box: no weights, CPU only, a few hundred ms per box at 512 px."""

    name = "GrabCut"
    kind = "grabcut"

    def __init__(self, iterations: int = 5) -> None:
        self.iterations = iterations

    def to(self, device: Any) -> "GrabCutSegmenter":
        return self

    def segment(self, image: Image.Image, boxes: list[Box]) -> np.ndarray:
        import cv2

        image = image.convert("RGB")
        width, height = image.size
        bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
        result = np.zeros((height, width), dtype=bool)
        for box in boxes:
            x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
            x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
            # GrabCut needs some background outside the rectangle to learn from.
            x0, y0 = max(x0, 1), max(y0, 1)
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            mask = np.zeros((height, width), np.uint8)
            background = np.zeros((1, 65), np.float64)
            foreground = np.zeros((1, 65), np.float64)
            try:
                cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), background, foreground, self.iterations,
                            cv2.GC_INIT_WITH_RECT)
                found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
            except cv2.error as exc:  # e.g. a flat image: keep the box itself
                log.warning("GrabCut failed (%s); using the box as the mask", exc)
                found = boxes_to_mask([box], (width, height))
            result |= found
        return result


def build_tiny_sam(seed: int = 0) -> SamSegmenter:
    """A tiny SAM with random weights (128 px input), for offline tests: its masks are meaningless."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                             image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=16, mlp_dim=64)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(config)
    processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 128},
                                                               pad_size={"height": 128, "width": 128}))
    return SamSegmenter(model, processor, "sam", "tiny-sam")


class BoxSegmenter:
    """No segmentation: the boxes themselves are the mask (useful with manual correction)."""

    name = "box"
    kind = "box"

    def to(self, device: Any) -> "BoxSegmenter":
        return self

    def segment(self, image: Image.Image, boxes: list[Box]) -> np.ndarray:
        return boxes_to_mask(boxes, image.size)


class DemoShapesSegmenter:
    """A demo segmenter for the offline demo domain: each box's mask is the demo shape it holds.

    The shapes are found as the demo detector finds them (:func:`webui.api.find_demo_shapes`);
    a box takes every shape whose centre lies inside it. No weights; demo images only.
    """

    name = "shapes-demo"
    kind = "demo"

    def to(self, device: Any) -> "DemoShapesSegmenter":
        return self

    def segment(self, image: Image.Image, boxes: list[Box]) -> np.ndarray:
        result = np.zeros((image.height, image.width), dtype=bool)
        shapes = find_demo_shapes(image)
        for x0, y0, x1, y1 in boxes:
            for shape in shapes:
                centre_x, centre_y = (shape.box[0] + shape.box[2]) / 2, (shape.box[1] + shape.box[3]) / 2
                if x0 <= centre_x <= x1 and y0 <= centre_y <= y1:
                    result |= shape.mask
        return result


def build_tiny_sam2(seed: int = 0) -> SamSegmenter:
    """A tiny SAM 2 (Hiera) with random weights (128 px input), for offline tests."""
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2ImageProcessor, Sam2MaskDecoderConfig, Sam2Model,
                              Sam2Processor, Sam2PromptEncoderConfig, Sam2VisionConfig)

    hiera = Sam2HieraDetConfig(hidden_size=12, embed_dim_per_stage=[12, 24, 48, 96],
                               num_attention_heads_per_stage=[1, 2, 4, 8], image_size=[128, 128],
                               patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3],
                               blocks_per_stage=[1, 2, 7, 2], window_size_per_stage=[8, 4, 14, 7],
                               global_attention_blocks=[5, 7, 9], window_positional_embedding_background_size=[7, 7])
    vision = Sam2VisionConfig(backbone_config=hiera.to_dict(), backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=32)
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32)
    config = Sam2Config(vision_config=vision.to_dict() | {"model_type": "sam2_vision_model"},
                        prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(config)
    processor = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128}))
    return SamSegmenter(model, processor, "sam2", "tiny-sam2")
