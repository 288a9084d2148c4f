"""QLoRA: LoRA on a bitsandbytes NF4-quantized base UNet/transformer. It needs CUDA and
bitsandbytes; elsewhere the config is refused with the reason. The CUDA run skips without CUDA."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.test_training import config_for, make_images
from webui.training import ConfigError, train
from webui.training.trainer import qlora_reason

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def test_qlora_is_refused_on_the_cpu_with_the_reason(tmp_path):
    make_images(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"QLoRA .* not available: bitsandbytes NF4 needs CUDA \(this device is cpu\)"):
        train(config_for(tmp_path, quantize_base="nf4"))
    assert not (tmp_path / "models" / "Lora" / "test_lora.safetensors").exists()
    with pytest.raises(ConfigError, match="LoRA adapters only"):
        config_for(tmp_path, quantize_base="nf4", mode="full").validate()
    with pytest.raises(ConfigError, match="quantize_base"):
        config_for(tmp_path, quantize_base="int3").validate()


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed here")
def test_qlora_reason_without_bitsandbytes():
    assert qlora_reason(torch.device("cuda")) == "bitsandbytes is not installed (pip install bitsandbytes)"
    assert "CUDA" in qlora_reason(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_BNB, reason="QLoRA needs CUDA and bitsandbytes")
def test_qlora_trains_on_cuda_and_the_file_loads(tmp_path):
    from webui.pipelines.tiny import build_tiny_pipeline

    make_images(tmp_path / "data")
    config = config_for(tmp_path, quantize_base="nf4", device="auto", max_steps=20, mixed_precision="bf16")
    result = train(config)
    assert result.status == "done"
    assert result.eval_loss_end < result.eval_loss_start, (result.eval_loss_start, result.eval_loss_end)
    pipe = build_tiny_pipeline("tiny")
    pipe.load_lora_weights(str(config.output_file), adapter_name="q")
    kwargs = dict(prompt="a photo of sks thing 1", num_inference_steps=3, width=64, height=64, output_type="np")
    with_lora = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    base = build_tiny_pipeline("tiny")(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert abs(with_lora - base).max() > 1e-3
