"""Export to one original-layout ``.safetensors`` checkpoint (the file A1111, Forge and ComfyUI load).

A tiny full fine-tune saved as both a diffusers folder and a single file: diffusers'
``from_single_file`` (offline: the config folder written beside the file) draws the same
pixels as the folder, with the same seed; Easel lists and draws the file too. Any local
diffusers folder exports the same way (the Models page's export action).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from webui.jobs import GenerationRequest
from webui.pipelines.export import export_diffusers_folder
from webui.training import ConfigError
from webui.training.trainer import LoraTrainer

from tests.test_training import config_for, make_images


def draw(pipe, seed=11) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    image = pipe("a photo of sks thing 2", num_inference_steps=3, height=64, width=64, guidance_scale=5.0,
                 generator=generator, output_type="np").images[0]
    return (image * 255).round().astype(np.uint8)


def test_full_finetune_as_single_file_loads_with_from_single_file_and_draws_the_folder_image(make_context, tmp_path):
    context = make_context()
    make_images(tmp_path / "data")
    config = config_for(tmp_path, mode="full", max_steps=3, learning_rate=5e-3, full_output_format="both",
                        models_dir=str(context.models_dir), output_name="tiny-ft")
    config.validate()
    result = LoraTrainer(config).run()
    assert result.status == "done"
    models = context.models_dir / "Stable-diffusion"
    folder, single = models / "tiny-ft", models / "tiny-ft.safetensors"
    assert result.output == str(folder) and (folder / "model_index.json").is_file() and single.is_file()
    sidecar = models / "tiny-ft.config"
    assert (sidecar / "model_index.json").is_file() and not list(sidecar.rglob("*.safetensors"))

    with safe_open(str(single), "pt") as handle:
        keys = list(handle.keys())
        meta = handle.metadata()
    assert meta["easel_mode"] == "full" and meta["easel_steps"] == "3" and meta["format"] == "pt"
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.") for k in keys)

    from_folder = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    from_file = StableDiffusionPipeline.from_single_file(str(single), config=str(sidecar), local_files_only=True)
    trained = draw(from_folder)
    assert np.array_equal(draw(from_file), trained)
    base = draw(StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True,
                                                        unet=_base_unet()))
    assert np.abs(trained.astype(int) - base.astype(int)).max() > 0  # the trained weights, not the base's

    # Easel lists both and draws the same image from each
    names = [source.name for source in context.list_models()]
    assert "tiny-ft" in names and "tiny-ft.safetensors" in names and "tiny-ft.config" not in names
    request = dict(prompt="a photo of sks thing 1", seed=7, width=64, height=64, steps=3, sampler="Euler")
    a = context.generate(GenerationRequest(model="tiny-ft", **request)).images[0].image
    b = context.generate(GenerationRequest(model="tiny-ft.safetensors", **request)).images[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))


def _base_unet():
    from webui.pipelines.tiny import build_tiny_pipeline

    return build_tiny_pipeline("tiny").unet


def test_single_file_format_writes_no_folder_and_is_refused_for_lora(tmp_path):
    make_images(tmp_path / "data")
    config = config_for(tmp_path, mode="full", max_steps=1, full_output_format="safetensors", output_name="only-file")
    result = LoraTrainer(config).run()
    models = tmp_path / "models" / "Stable-diffusion"
    assert result.output == str(models / "only-file.safetensors") and (models / "only-file.safetensors").is_file()
    assert not (models / "only-file").exists()
    with pytest.raises(ConfigError, match="full_output_format"):
        config_for(tmp_path, full_output_format="safetensors").validate()
    with pytest.raises(ConfigError, match="full_output_format"):
        config_for(tmp_path, mode="full", full_output_format="ckpt").validate()


def test_export_any_local_diffusers_folder(tmp_path):
    from webui.pipelines.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline("tiny", tmp_path / "my-model")
    path = export_diffusers_folder(folder, tmp_path / "out" / "my-model.safetensors", metadata={"note": "x"})
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["note"] == "x"
    config = tmp_path / "out" / "my-model.config"
    assert json.loads((config / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True)
    assert np.array_equal(draw(loaded), draw(StableDiffusionPipeline.from_pretrained(str(folder),
                                                                                     local_files_only=True)))
    with pytest.raises(ValueError, match="model_index.json"):
        export_diffusers_folder(tmp_path / "out", tmp_path / "x.safetensors")
