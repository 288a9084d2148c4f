"""The demo model's trainer: a quick run trains and saves a loadable pipeline; a stopped run resumes
exactly; the evaluation measures give known answers on known drawers and autoencoders."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tools.demo_model.train import DemoTrainConfig, train

def unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def changed_fraction(initial, saved):
    """The fraction of ``initial``'s tensors whose saved (fp16) value differs from the initial one."""
    changed = [not torch.equal(value.to(saved[key].dtype), saved[key]) for key, value in initial.items()]
    return sum(changed) / len(changed)


@pytest.mark.slow
def test_quick_run_trains_and_saves_a_pipeline_that_draws(tmp_path):
    from diffusers import StableDiffusionPipeline

    from tools.demo_model.tokenizer import write_tokenizer
    from tools.demo_model.train import build_models

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
    assert image.size == (128, 128) and np.asarray(image).std() > 0
    # the stages trained: the saved VAE and UNet are not their initial weights (same seed)
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    token_ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    vae, _text_encoder, unet = build_models(DemoTrainConfig.quick(), len(tokenizer), token_ids)
    saved_vae = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    assert changed_fraction(vae.state_dict(), saved_vae) > 0.9
    assert changed_fraction(unet.state_dict(), unet_weights(out)) > 0.9


class StubAutoencoder:
    """What :func:`vae_psnr` calls on a VAE: latents are the pixels, ``decode`` maps them back."""

    dtype = torch.float32

    def __init__(self, decode):
        self._decode = decode

    def encode(self, pixels):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=pixels))

    def decode(self, latents):
        return SimpleNamespace(sample=self._decode(latents))


def test_vae_psnr_gives_known_answers():
    """A perfect autoencoder scores the 120 dB cap; one that decodes everything to mid-grey scores
    the PSNR of grey against the held-out images, computed here from their 8-bit pixels."""
    from tools.demo_model.evaluate import EVAL_SEED, vae_psnr
    from tools.demo_model.shapes import sample

    assert vae_psnr(StubAutoencoder(lambda latents: latents), count=3) == pytest.approx(120.0)
    expected = []
    for index in range(3):
        pixels = np.asarray(sample(EVAL_SEED + 1, index)[0], dtype=np.float64)
        mse = np.mean(((pixels - 127.5) / 255.0) ** 2)  # the error in [0, 1] units
        expected.append(10 * math.log10(1.0 / mse))
    grey = vae_psnr(StubAutoencoder(torch.zeros_like), count=3)
    assert grey == pytest.approx(float(np.mean(expected)), abs=1e-3) and 3 < grey < 20


def test_adherence_gives_full_marks_to_a_perfect_drawer_and_low_ones_to_a_deaf_drawer():
    """Drawing each caption exactly scores 1.0 everywhere; drawing one fixed image whatever the
    caption scores only the share of captions that happen to ask for it."""
    from tools.demo_model.evaluate import adherence, eval_prompts, judgements
    from tools.demo_model.shapes import ShapeSpec, parse_caption, render

    pairs = eval_prompts(24)
    perfect = adherence(judgements(lambda caption, seed: render(parse_caption(caption)), pairs))
    assert perfect == {"colours": 1.0, "shape": 1.0, "size": 1.0}
    fixed = ShapeSpec(shape="circle", colour="red", background="blue", size="small")
    deaf = adherence(judgements(lambda caption, seed: render(fixed), pairs))
    specs = [parse_caption(caption) for caption, _ in pairs]
    assert deaf["shape"] == sum(spec.shape == "circle" for spec in specs) / len(specs) < 0.5
    assert deaf["size"] == sum(spec.size == "small" for spec in specs) / len(specs) < 1.0
    assert deaf["colours"] == sum((spec.colour, spec.background) == ("red", "blue") for spec in specs) / len(specs)


@pytest.mark.slow
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
