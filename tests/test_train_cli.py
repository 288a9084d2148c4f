"""The trainer's command line, as a user runs it: ``python -m webui.train --config FILE``.

A tqdm bar with the loss and s/step on stderr, ``eval_examples: 0`` turns the evaluation off,
impossible values are a config error naming the option (exit status 2), and loading a
diffusers folder prints no ``torch_dtype`` deprecation warning."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import asdict

import pytest
import torch

from tests.test_training import ROOT, config_for, make_images
from webui.training import ConfigError
from webui.training.config import config_from_dict


def run_cli(config_file, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "webui.train", "--config", str(config_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_shows_a_progress_bar_with_the_loss_and_runs_without_evaluation(tmp_path):
    from webui.pipelines.tiny import save_tiny_pipeline

    make_images(tmp_path / "data")
    base = save_tiny_pipeline("tiny", tmp_path / "base")  # a diffusers folder: the from_pretrained path
    config = config_for(tmp_path, model=str(base), max_steps=3, batch_size=1, eval_examples=0)
    config_file = tmp_path / "train.json"
    config_file.write_text(json.dumps(asdict(config)))
    done = run_cli(config_file)
    assert done.returncode == 0, done.stderr[-3000:]

    # the bar: every redraw is separated by \r or \n; the last one is the finished bar
    frames = [frame for frame in re.split(r"[\r\n]", done.stderr) if frame.startswith("training:")]
    assert frames, done.stderr[-3000:]
    final = frames[-1]
    assert "100%" in final and "3/3" in final, final
    loss = re.search(r"loss=(\d+\.\d{4})", final)
    events = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    step_losses = [event["loss"] for event in events if event["event"] == "step"]
    assert loss and float(loss.group(1)) == pytest.approx(step_losses[-1], abs=1e-4)  # the last step's loss
    assert re.search(r"\d s/step", final), final

    # eval_examples 0: no evaluation at all
    assert [event["event"] for event in events if event["event"] == "eval"] == []
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["eval_loss_start"] is None and summary["eval_loss_end"] is None
    assert "eval loss" not in done.stderr

    # loading the folder passes what diffusers asks for (dtype, not the deprecated torch_dtype)
    assert "torch_dtype" not in done.stderr, done.stderr[-3000:]
    assert not [line for line in done.stderr.splitlines() if "dtype" in line and "deprecat" in line.lower()]


def test_cli_refuses_a_bad_value_naming_the_option(tmp_path):
    make_images(tmp_path / "data")
    config = asdict(config_for(tmp_path))
    config["learning_rate"] = -1e-4
    config_file = tmp_path / "train.json"
    config_file.write_text(json.dumps(config))
    done = run_cli(config_file, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == "error: learning_rate must be greater than 0 (got -0.0001)"
    assert not (tmp_path / "run").exists()  # refused before anything started


@pytest.mark.parametrize("option, value, message", [
    ("max_steps", -10, "max_steps must not be negative"),
    ("epochs", -1, "epochs must not be negative"),
    ("rank", 0, "rank must be at least 1"),
    ("batch_size", 0, "batch_size must be at least 1"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be at least 1"),
    ("learning_rate", 0, "learning_rate must be greater than 0"),
    ("learning_rate", float("nan"), "learning_rate must be greater than 0"),
    ("alpha", -4, "alpha must be greater than 0"),
    ("text_encoder_lr", 0.0, "text_encoder_lr must be greater than 0"),
    ("eval_examples", -1, "eval_examples must not be negative"),
    ("lr_warmup_steps", -5, "lr_warmup_steps must not be negative"),
    ("keep_checkpoints", 0, "keep_checkpoints must be at least 1"),
    ("mode", "partial", "mode must be one of lora, full"),
    ("lr_scheduler", "cosine_annealing", "lr_scheduler must be one of"),
    ("device", "tpu", "device must be one of auto, cpu, cuda"),
    ("resolution", 100, "resolution must be a multiple of 8"),
    ("rank", "16", "rank must be a whole number"),
    ("max_steps", 2.5, "max_steps must be a whole number"),
    ("learning_rate", "1e-4", "learning_rate must be a number"),
    ("use_captions", "yes", "use_captions must be true or false"),
    ("target_modules", "to_q", "target_modules must be a list of strings"),
    ("target_modules", [], "target_modules is empty"),
])
def test_impossible_values_are_a_config_error_naming_the_option(tmp_path, option, value, message):
    config = {**asdict(config_for(tmp_path)), option: value}
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(config).validate()


def test_sensible_values_pass_validation(tmp_path):
    config = {**asdict(config_for(tmp_path)), "alpha": 16, "learning_rate": 1, "text_encoder_lr": None,
              "max_steps": 0, "epochs": 2, "eval_examples": 0, "num_class_images": 0}
    config_from_dict(config).validate()


def test_device_cuda_without_a_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    from webui.training import train

    make_images(tmp_path / "data")
    with pytest.raises(ConfigError, match="device is 'cuda' but PyTorch sees no CUDA GPU"):
        train(config_for(tmp_path, device="cuda"))


def test_loading_a_folder_and_a_single_file_emits_no_dtype_deprecation(tmp_path, caplog):
    """Every diffusers/transformers call of the loader gets ``dtype=`` (warnings and library logs checked)."""
    from webui.pipelines.export import export_single_file
    from webui.pipelines.loaders import load_pipeline
    from webui.pipelines.sources import ModelSource
    from webui.pipelines.tiny import build_tiny_pipeline

    folder = tmp_path / "tiny.config"  # also the sidecar config folder of the single file
    pipe = build_tiny_pipeline("tiny")
    pipe.save_pretrained(folder, safe_serialization=True)
    single = export_single_file(pipe, tmp_path / "tiny.safetensors")
    caplog.set_level("WARNING")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pipeline(ModelSource(name="tiny", kind="folder", location=str(folder)), "sd1", torch.float32)
        load_pipeline(ModelSource(name="tiny.safetensors", kind="file", location=str(single)), "sd1", torch.float32)
    messages = [str(w.message) for w in caught] + [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "dtype" in m and "deprecat" in m.lower()], messages
