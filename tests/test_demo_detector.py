"""The Background tab's demo detector and segmenter: "the red circle" on a demo image finds the circle.

The box is checked against the judge's own location of the shape (the bounding box of
``tools.demo_model.judge.foreground_mask``) and the mask against that mask, through the same
registry and engine calls the tab uses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from extensions.background import engine, registry
from tools.demo_model.judge import foreground_mask
from tools.demo_model.shapes import ShapeSpec, render
from webui.api import match_demo_shapes


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def two_shapes(size: int = 128) -> tuple[Image.Image, ShapeSpec, ShapeSpec]:
    """A small red circle on the left and a small yellow star on the right, one green background."""
    left = ShapeSpec(shape="circle", colour="red", background="green", size="small", position="left")
    right = ShapeSpec(shape="star", colour="yellow", background="green", size="small", position="right")
    image = render(left, size)
    image.paste(render(right, size).crop((size // 2, 0, size, size)), (size // 2, 0))
    return image, left, right


@pytest.mark.parametrize("spec", [
    ShapeSpec(shape="circle", colour="red", background="blue", size="large"),
    ShapeSpec(shape="circle", colour="red", background="white", size="small", position="top"),
])
def test_the_red_circle_is_found_where_the_judge_sees_it(context, spec):
    image = render(spec, 128)
    judged = foreground_mask(image)
    detections = engine.detect_subject(context, image, "the red circle", registry.DEMO_SHAPES)
    assert len(detections) == 1
    assert detections[0].label == f"{spec.size} red circle" and detections[0].score > 0.8
    assert box_iou(detections[0].box, box_of(judged)) > 0.95
    mask = engine.segment_subject(context, image, [detections[0].box], registry.DEMO_SHAPES)
    assert (mask & judged).sum() / (mask | judged).sum() > 0.95


def test_only_the_named_shape_of_two_is_found(context):
    image, left, right = two_shapes()
    circle = engine.detect_subject(context, image, "keep the red circle", registry.DEMO_SHAPES)
    star = engine.detect_subject(context, image, "the yellow star", registry.DEMO_SHAPES)
    assert [d.label for d in circle] == ["small red circle"] and [d.label for d in star] == ["small yellow star"]
    assert circle[0].box[2] <= 64 <= star[0].box[0]  # left half and right half
    assert box_iou(circle[0].box, box_of(foreground_mask(render(left, 128)))) > 0.95
    both = engine.detect_subject(context, image, "the shapes", registry.DEMO_SHAPES)
    assert sorted(d.label for d in both) == ["small red circle", "small yellow star"]
    mask = engine.segment_subject(context, image, [circle[0].box], registry.DEMO_SHAPES)
    assert not mask[:, 64:].any() and mask[:, :64].sum() > 300  # the circle only


@pytest.mark.parametrize("prompt", ["the blue circle", "the red square", "the dog", "a large red circle"])
def test_what_the_image_does_not_show_is_not_found(prompt):
    image = render(ShapeSpec(shape="circle", colour="red", background="blue", size="small", position="left"), 128)
    assert match_demo_shapes(image, prompt) == []


def test_noise_has_no_shapes():
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert match_demo_shapes(noise, "the shape") == []


def test_the_demo_choices_are_labelled_as_a_demo(tmp_path):
    detector = registry.find(registry.detector_choices(tmp_path), registry.DEMO_SHAPES, "detector")
    segmenter = registry.find(registry.segmenter_choices(tmp_path), registry.DEMO_SHAPES, "segmenter")
    assert "demo" in detector.label and "demo" in segmenter.label


@pytest.mark.slow
def test_replacing_the_background_from_a_typed_subject_offline(context):
    """The whole Background flow offline: "the red circle" detected and segmented by the demo choices,
    the demo model repaints the rest green, the circle comes back pixel-identical."""
    from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

    if not (DEMO_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("the demo model is not shipped")
    from extensions.background import masks
    from tools.demo_model.judge import judge

    image = render(ShapeSpec(shape="circle", colour="red", background="blue", size="large"), 128)
    options = engine.ReplaceOptions(background_prompt="a large red circle on a green background",
                                    model=DEMO_MODEL_NAME, sampler="Euler", steps=20, cfg_scale=5.0, seed=1,
                                    work_side=128, save=False)
    outcome = engine.run_background_job(context, engine.BackgroundJob(
        image=image, subject_prompt="the red circle", detector=registry.DEMO_SHAPES, segmenter=registry.DEMO_SHAPES,
        options=options))
    assert [d.label for d in outcome.detections] == ["large red circle"]
    judged = foreground_mask(image)
    assert (outcome.result.mask & judged).sum() / (outcome.result.mask | judged).sum() > 0.95
    core = masks.grow(judged, -options.erode - 1)
    assert np.array_equal(np.asarray(outcome.result.image)[core], np.asarray(image)[core])
    verdict = judge(outcome.result.image)
    assert (verdict.colour, verdict.shape, verdict.background) == ("red", "circle", "green"), verdict
