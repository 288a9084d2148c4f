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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA")
@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (requirements-gpu.txt)")
def test_qlora_base_is_smaller_on_the_gpu_trains_and_the_file_loads(tmp_path, record_figures):
    """The NF4 base UNet takes less GPU memory than the same UNet in bf16; a QLoRA run on it lowers
    the eval loss, and its LoRA file changes what a plain pipeline draws."""
    from webui.pipelines.tiny import build_tiny_pipeline
    from webui.training.trainer import quantized_denoiser, resolve_source

    make_images(tmp_path / "data")
    config = config_for(tmp_path, quantize_base="nf4", device="auto", max_steps=20, mixed_precision="bf16")

    base = build_tiny_pipeline("tiny")
    bf16_bytes = sum(p.numel() * 2 for p in base.unet.parameters())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    quantized = quantized_denoiser(base, resolve_source(config), "sd1", torch.bfloat16)
    torch.cuda.synchronize()
    nf4_bytes = torch.cuda.memory_allocated() - before
    assert "Linear4bit" in {type(m).__name__ for m in quantized.modules()}
    del quantized, base
    torch.cuda.empty_cache()

    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = train(config)
    peak = torch.cuda.max_memory_allocated() - before
    record_figures("qlora-tiny", device=torch.cuda.get_device_name(0), nf4_unet_MiB=round(nf4_bytes / 2**20, 3),
                   bf16_unet_MiB=round(bf16_bytes / 2**20, 3), train_peak_MiB=round(peak / 2**20, 2),
                   eval_loss_start=result.eval_loss_start, eval_loss_end=result.eval_loss_end)
    assert 0 < nf4_bytes < bf16_bytes, (nf4_bytes, bf16_bytes)
    assert result.status == "done"
    assert result.eval_loss_end < result.eval_loss_start, (result.eval_loss_start, result.eval_loss_end)
    pipe = build_tiny_pipeline("tiny")
    pipe.load_lora_weights(str(config.output_file), adapter_name="q")
    kwargs = dict(prompt="a photo of sks thing 1", num_inference_steps=3, width=64, height=64, output_type="np")
    with_lora = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    base_images = build_tiny_pipeline("tiny")(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert abs(with_lora - base_images).max() > 1e-3
