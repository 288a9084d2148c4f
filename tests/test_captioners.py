"""Captioners (webui.training.captioners): the demo shapes captioner writes the demo model's own captions,
the tiny random BLIP runs through the real transformers local-folder path, and captioning a dataset
keeps or overwrites captions with a prefix/suffix."""

from __future__ import annotations

import pytest

from tools.demo_model.shapes import ShapeSpec, render, sample
from webui.training.captioners import (
    SHAPES_CAPTIONER,
    TINY_CAPTIONER,
    TINY_WORDS,
    ShapesCaptioner,
    TransformersCaptioner,
    caption_dataset,
    captioner_choices,
    load_captioner,
    write_tiny_blip,
)
from webui.training.datasets import DatasetStore


def test_the_shapes_captioner_writes_the_captions_the_demo_data_has():
    # the demo model's training images (tools.demo_model.shapes.sample), positions named
    specs = [sample(777, index, 128)[2] for index in range(40)]
    images = [render(spec, 128) for spec in specs]
    calls = []
    captions = ShapesCaptioner().caption(images, progress=lambda done, total: calls.append((done, total)))
    expected = [spec.caption(name_position=True) for spec in specs]
    assert captions == expected
    assert calls[-1] == (40, 40) and len(calls) == 40
    assert {spec.position for spec in specs} > {"center"}  # off-centre small shapes were part of it


@pytest.mark.parametrize("spec", [
    ShapeSpec(shape="star", colour="yellow", background="purple", size="small", position="right"),
    ShapeSpec(shape="triangle", colour="cyan", background="black", size="large"),
    ShapeSpec(shape="cross", colour="white", background="green", size="small", position="top"),
])
def test_the_shapes_captioner_reads_shape_colour_size_and_position_at_64_px(spec):
    assert ShapesCaptioner().caption([render(spec, 64)]) == [spec.caption(name_position=True)]


def test_the_shapes_captioner_says_nothing_about_noise():
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert ShapesCaptioner().caption([noise]) == [""]


def test_the_tiny_random_captioner_runs_through_the_local_folder_path(tmp_path):
    folder = write_tiny_blip(tmp_path / "models" / "Captioning" / "tiny-blip")
    choices = {choice.name: choice for choice in captioner_choices(tmp_path / "models")}
    assert choices["Captioning/tiny-blip"].kind == "transformers"  # a user's folder is listed
    assert "random weights" in choices[TINY_CAPTIONER].label
    captioner = load_captioner("Captioning/tiny-blip", tmp_path / "models", device="cpu")
    assert isinstance(captioner, TransformersCaptioner) and captioner.location == str(folder)
    captioner.batch_size = 2
    captioner.max_new_tokens = 8
    images = [render(ShapeSpec(shape="circle", colour=c, background="blue", size="large"), 64)
              for c in ("red", "green", "yellow")]
    seen = []
    captions = captioner.caption(images, progress=lambda done, total: seen.append((done, total)))
    assert len(captions) == 3 and all(isinstance(text, str) and text for text in captions)
    vocabulary = {word for word in TINY_WORDS if not word.startswith("[")}
    assert all(set(text.split()) <= vocabulary for text in captions), captions  # decoded by its own tokenizer
    assert seen == [(2, 3), (3, 3)]
    # the built-in entry builds the same kind of model in a temporary folder and loads it the same way
    builtin = load_captioner(TINY_CAPTIONER, tmp_path / "models", device="cpu")
    assert isinstance(builtin, TransformersCaptioner) and len(builtin.caption(images[:1])) == 1
    assert folder.is_dir()


def test_an_unknown_captioner_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown captioner"):
        load_captioner("nope", tmp_path)


def demo_dataset(tmp_path, specs):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    files = []
    for index, spec in enumerate(specs):
        path = uploads / f"shape{index}.png"
        render(spec, 64).save(path)
        files.append(path)
    store = DatasetStore(tmp_path / "datasets")
    store.create("demo", files)
    return store


def test_captioning_a_dataset_keeps_or_overwrites_with_prefix_and_suffix(tmp_path):
    specs = [ShapeSpec(shape="circle", colour="red", background="blue", size="large"),
             ShapeSpec(shape="square", colour="green", background="white", size="large"),
             ShapeSpec(shape="diamond", colour="orange", background="black", size="large")]
    store = demo_dataset(tmp_path, specs)
    store.set_caption("demo", "shape1.png", "my own words")
    steps = []
    report = caption_dataset(store, "demo", load_captioner(SHAPES_CAPTIONER, tmp_path), prefix="sks", suffix="flat",
                             progress=lambda done, total: steps.append((done, total)), batch_size=1)
    assert report.captioned == ["shape0.png", "shape2.png"] and report.kept == ["shape1.png"]
    assert steps == [(0, 2), (1, 2), (2, 2)]
    assert [item.caption for item in store.images("demo")] == [
        "sks, a large red circle on a blue background, flat", "my own words",
        "sks, a large orange diamond on a black background, flat"]
    assert (store.folder("demo") / "shape0.txt").read_text(encoding="utf-8") == store.images("demo")[0].caption

    report = caption_dataset(store, "demo", ShapesCaptioner(), overwrite=True)
    assert len(report.captioned) == 3
    assert [item.caption for item in store.images("demo")] == [spec.caption() for spec in specs]


def test_a_hub_captioner_offline_says_where_to_put_a_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded before
    with pytest.raises(ValueError, match="Offline, put a copy of the model under .*models/Captioning"):
        load_captioner("Salesforce/blip-image-captioning-base", tmp_path / "models", device="cpu")


@pytest.mark.gpu
def test_the_transformers_captioner_runs_on_a_gpu_in_half_precision(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    folder = write_tiny_blip(tmp_path / "models" / "Captioning" / "tiny-blip")
    captioner = load_captioner("Captioning/tiny-blip", tmp_path / "models", device="cuda")
    parameter = next(captioner.model.parameters())
    assert parameter.device.type == "cuda" and parameter.dtype == torch.float16
    images = [render(ShapeSpec(shape="circle", colour="red", background="blue", size="large"), 64)] * 3
    captions = captioner.caption(images)
    vocabulary = {word for word in TINY_WORDS if not word.startswith("[")}
    assert len(captions) == 3 and all(text and set(text.split()) <= vocabulary for text in captions), captions
    assert folder.is_dir()
