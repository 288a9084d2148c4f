"""The demo model's trainer: a quick run saves a loadable pipeline; a stopped run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from webui.demo_model.train import DemoTrainConfig, train

pytestmark = pytest.mark.slow


def unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_quick_run_saves_a_pipeline_that_draws_and_can_be_measured(tmp_path):
    from diffusers import StableDiffusionPipeline

    from webui.demo_model.evaluate import adherence, eval_prompts, judgements, pipeline_drawer, vae_psnr

    out = train(DemoTrainConfig.quick(), tmp_path / "out", tmp_path / "work")
    record = json.loads((out / "training.json").read_text())
    assert record["seed"] == 0 and record["config"]["unet_steps"] == 4
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["easel_demo_training"])["config"]["unet_steps"] == 4
    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    assert pipe.vae_scale_factor == 8
    assert len(pipe.tokenizer("a small red circle on an orange background").input_ids) == 10  # one token a word
    image = pipe("a small red circle on a blue background", num_inference_steps=2, guidance_scale=5,
                 generator=torch.Generator("cpu").manual_seed(1)).images[0]
    assert image.size == (128, 128)
    scores = adherence(judgements(pipeline_drawer(pipe, steps=2), eval_prompts(2)))
    assert set(scores) == {"colours", "shape", "size"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert vae_psnr(pipe.vae, count=2) > 0


def test_stopped_run_resumes_to_the_same_weights(tmp_path):
    config = DemoTrainConfig.quick()
    straight = train(config, tmp_path / "straight", tmp_path / "work-straight")
    assert train(config, tmp_path / "resumed", tmp_path / "work-resumed", stop_after=1) is None
    resumed = None
    for _ in range(20):
        resumed = train(config, tmp_path / "resumed", tmp_path / "work-resumed", stop_after=1)
        if resumed is not None:
            break
    assert resumed is not None
    first, second = unet_weights(straight), unet_weights(resumed)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
