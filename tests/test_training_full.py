"""Full fine-tune mode: the whole UNet / SD3 transformer trained (optionally with EMA), saved as a
diffusers folder in models/Stable-diffusion/ that txt2img lists and loads; resume == uninterrupted;
two data-parallel processes through accelerate launch on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from webui.jobs import GenerationRequest
from webui.training import ConfigError, save_config, train
from webui.training.trainer import LoraTrainer

from tests.test_training import ROOT, config_for, make_images

SMALL = dict(width=64, height=64, steps=3, sampler="Euler")


def _unet_weights(folder, sub="unet"):
    return load_file(str(next((folder / sub).glob("*.safetensors"))))


class ClosedFormEMA:
    """The EMA of the trained weights, computed here from the weights after every optimizer step.

    Follows ``diffusers.training_utils.EMAModel`` (no warm-up): the decay of update ``n`` is
    ``min(ema_decay, n / (n + 9))`` (0 at the first update, which copies the weights).
    """

    def __init__(self, ema_decay):
        self.ema_decay = ema_decay
        self.updates = 0
        self.weights = None

    def update(self, weights):
        self.updates += 1
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in weights.items()}
            return
        decay = min(self.ema_decay, self.updates / (self.updates + 9))
        for key, value in weights.items():
            self.weights[key] -= (1 - decay) * (self.weights[key] - value.detach())


def test_full_finetune_with_ema_loads_in_txt2img(context, tmp_path):
    make_images(tmp_path / "data")
    # decay 0.5 caps the warm-up decay n / (n + 9) from update 9 on: the configured decay matters
    config = config_for(tmp_path, mode="full", use_ema=True, ema_decay=0.5, max_steps=12, learning_rate=2e-4,
                        models_dir=str(context.models_dir), output_name="tiny-ft")
    expected = ClosedFormEMA(config.ema_decay)
    trainer = None

    def after_each_step(record):
        if record["event"] == "step":
            expected.update(trainer.accelerator.unwrap_model(trainer.model).state_dict())

    trainer = LoraTrainer(config, callback=after_each_step)
    result = trainer.run()
    assert result.status == "done" and expected.updates == 12
    assert result.eval_loss_end < result.eval_loss_start, (result.eval_loss_start, result.eval_loss_end)
    folder = context.models_dir / "Stable-diffusion" / "tiny-ft"
    assert result.output == str(folder) and (folder / "model_index.json").is_file()
    meta = json.loads((folder / "easel_training.json").read_text())
    assert meta["easel_mode"] == "full" and meta["easel_ema"] == "True" and meta["easel_steps"] == "12"
    # the text encoder under the official checkpoints' names, which transformers 4 loaders read too
    text_encoder_keys = load_file(str(folder / "text_encoder" / "model.safetensors")).keys()
    assert text_encoder_keys and all(k.startswith("text_model.") for k in text_encoder_keys), sorted(text_encoder_keys)[:3]

    # the saved UNet holds the EMA of the trained weights (to float rounding), which lags the raw
    # trained weights (measured: training moved a weight by 2.4e-3 at most, the EMA lags by 2e-4)
    saved = _unet_weights(folder)
    raw = {k: v.detach().cpu() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    from webui.pipelines.tiny import build_tiny_pipeline

    base = build_tiny_pipeline("tiny").unet.state_dict()
    assert saved.keys() == raw.keys() == expected.weights.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], expected.weights[key], rtol=1e-5, atol=1e-6, msg=key)
    moved = max((raw[k] - base[k]).abs().max().item() for k in saved)
    lag = max((saved[k] - raw[k]).abs().max().item() for k in saved)
    assert moved > 1e-3 and lag > 0.03 * moved, (moved, lag)

    # txt2img lists and loads it through the manager; it draws a different image than the base
    assert "tiny-ft" in [source.name for source in context.list_models()]
    request = dict(prompt="a photo of sks thing 1", seed=7, **SMALL)
    tuned = context.generate(GenerationRequest(model="tiny-ft", **request)).images[0]
    plain = context.generate(GenerationRequest(model="tiny", **request)).images[0]
    with context.pipelines.use("tiny-ft") as model:
        assert model.family == "sd1"
    assert np.abs(np.asarray(tuned.image, dtype=int) - np.asarray(plain.image, dtype=int)).max() > 0


def test_full_finetune_resume_equals_uninterrupted(tmp_path):
    make_images(tmp_path / "data")
    common = dict(mode="full", use_ema=True, ema_decay=0.9, max_steps=4, checkpoint_every=2, keep_checkpoints=1,
                  learning_rate=2e-4, lr_scheduler="cosine")
    straight = config_for(tmp_path, output_name="straight", run_dir=str(tmp_path / "run-a"), **common)
    assert train(straight).status == "done"
    interrupted = config_for(tmp_path, output_name="resumed", run_dir=str(tmp_path / "run-b"), stop_after_steps=3,
                             **common)
    first = train(interrupted)
    assert first.status == "cancelled" and first.step == 3 and not interrupted.output_file.exists()
    interrupted.stop_after_steps = 0
    assert train(interrupted).status == "done"
    a, b = _unet_weights(straight.output_file), _unet_weights(interrupted.output_file)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_full_finetune_sd3_transformer(tmp_path):
    make_images(tmp_path / "data", count=2)
    config = config_for(tmp_path, model="tiny-sd3", mode="full", max_steps=6, learning_rate=1e-3, eval_examples=2)
    result = train(config)
    assert result.eval_loss_end < result.eval_loss_start, (result.eval_loss_start, result.eval_loss_end)
    assert (config.output_file / "transformer").is_dir()


def test_full_mode_bad_options_are_refused(tmp_path):
    make_images(tmp_path / "data")
    with pytest.raises(ConfigError, match="mode"):
        config_for(tmp_path, mode="partial").validate()
    with pytest.raises(ConfigError, match="EMA"):
        config_for(tmp_path, use_ema=True).validate()
    with pytest.raises(ConfigError, match="text-encoder"):
        config_for(tmp_path, mode="full", train_text_encoder=True).validate()


def test_full_finetune_never_overwrites_its_base_model(tmp_path):
    from webui.pipelines.tiny import save_tiny_pipeline

    make_images(tmp_path / "data")
    base = tmp_path / "models" / "Stable-diffusion" / "mybase"
    save_tiny_pipeline("tiny", base)
    before = sorted(p.name for p in base.rglob("*"))
    with pytest.raises(ConfigError, match="overwrite"):
        train(config_for(tmp_path, model="mybase", mode="full", output_name="mybase"))
    assert sorted(p.name for p in base.rglob("*")) == before


def test_full_finetune_accelerate_launch_two_processes_on_cpu(tmp_path):
    make_images(tmp_path / "data")
    config = config_for(tmp_path, mode="full", use_ema=True, max_steps=2, batch_size=1, checkpoint_every=1,
                        output_name="two_procs_full")
    config_file = save_config(config, tmp_path / "train.json")
    from webui.training.launch import launch_command

    command = launch_command(config_file, num_processes=2, mixed_precision="no")
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # one output (written by the main process only): the diffusers folder, no LoRA file
    assert sorted(p.name for p in (tmp_path / "models" / "Stable-diffusion").iterdir()) == ["two_procs_full"]
    assert (tmp_path / "models" / "Stable-diffusion" / "two_procs_full" / "model_index.json").is_file()
    assert not (tmp_path / "models" / "Lora").exists() or not any((tmp_path / "models" / "Lora").iterdir())
    events = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    start = [event for event in events if event["event"] == "start"]
    assert start[0]["processes"] == 2 and start[0]["mode"] == "full"
    assert [event["event"] for event in events].count("done") == 1
    assert _unet_weights(tmp_path / "models" / "Stable-diffusion" / "two_procs_full")
