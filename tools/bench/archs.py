"""Pipelines the memory benchmark runs, built from configs with random weights (no download).

* ``bench-sd1`` (CPU): a Stable Diffusion 1.x pipeline whose **VAE has SD's exact layout**
  (4 levels, 2 ResNets per level, mid-block attention, downsampling factor 8) at a quarter
  of SD's channel widths (32, 64, 128, 128 instead of 128, 256, 512, 512), with the tiny
  model's text encoder and UNet. At the sizes where memory matters (1024 px and up) the VAE
  decoder's full-resolution activations dominate the peak (a 1024x1024 fp32 activation of
  SD's VAE is 512 MiB per tensor; the UNet works at 1/8 of the side), so activation memory
  here scales with the image exactly as in SD (per pixel, a quarter of it), while the
  compute (1/16 of SD's VAE) stays feasible on a 2-core CPU.
* ``sd15``, ``sdxl``, ``sd35-medium`` (CUDA): the real architectures of SD 1.5, SDXL base and
  SD 3.5 Medium (UNet/transformer, VAE and text encoders at full size, T5-XXL included) from
  their published configs. Memory and speed do not depend on the weights; the tokenizers are
  the tiny offline ones (token ids only index the embedding tables).

Each pipeline is written once as a diffusers folder (``save_pretrained``) in a cache folder
and then loaded by the benchmark through Easel's normal model-loading path.
"""

from __future__ import annotations

import pathlib
from typing import Callable

import torch

ARCHS = ("bench-sd1", "sd15", "sdxl", "sd35-medium")


def _sd_vae(channels, sample_size, scaling_factor, latent_channels=4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(channels), layers_per_block=2, norm_num_groups=32,
        sample_size=sample_size, scaling_factor=scaling_factor, **extra,
    )


def _seeded(key: str, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    import zlib

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(zlib.crc32(key.encode()))
        return factory().eval()


def build_bench_sd1():
    """The CPU benchmark pipeline (see the module docstring)."""
    from webui.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny")
    vae = _seeded("bench-sd1/vae", lambda: _sd_vae((32, 64, 128, 128), 512, 0.18215))
    pipe.register_modules(vae=vae)
    return pipe


def _clip(tokenizer, hidden, layers, heads, intermediate, act, projection=None, with_projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads, hidden_act=act,
                            projection_dim=projection or hidden, max_position_embeddings=77,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_sd15():
    """SD 1.5 at full size: UNet 860M, CLIP ViT-L/14 text encoder, SD VAE."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from webui.pipelines.tiny import _clip_tokenizer

    tokenizer = _clip_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                                cross_attention_dim=768,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    text_encoder = _clip(tokenizer, 768, 12, 12, 3072, "quick_gelu")
    vae = _sd_vae((128, 256, 512, 512), 512, 0.18215)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_sdxl():
    """SDXL base at full size: UNet 2.6B, CLIP ViT-L + OpenCLIP bigG, SDXL VAE."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from webui.pipelines.tiny import _clip_tokenizer

    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    text_encoder = _clip(tokenizer, 768, 12, 12, 3072, "quick_gelu")
    text_encoder_2 = _clip(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280, with_projection=True)
    vae = _sd_vae((128, 256, 512, 512), 1024, 0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def build_sd35_medium():
    """SD 3.5 Medium at full size: MMDiT-X 2.5B, CLIP-L, CLIP-G, T5-XXL encoder, 16-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    from webui.pipelines.tiny import _clip_tokenizer, _t5_tokenizer

    tokenizer, tokenizer_2, tokenizer_3 = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
        pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm",
        dual_attention_layers=tuple(range(13)))
    text_encoder = _clip(tokenizer, 768, 12, 12, 3072, "quick_gelu", projection=768, with_projection=True)
    text_encoder_2 = _clip(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280, with_projection=True)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=tokenizer_3.pad_token_id, eos_token_id=tokenizer_3.eos_token_id))
    vae = _sd_vae((128, 256, 512, 512), 1024, 1.5305, latent_channels=16, shift_factor=0.0609,
                  use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


BUILDERS = {"bench-sd1": build_bench_sd1, "sd15": build_sd15, "sdxl": build_sdxl,
            "sd35-medium": build_sd35_medium}


def ensure_arch_folder(arch: str, cache: pathlib.Path, dtype: torch.dtype = torch.float32) -> pathlib.Path:
    """The diffusers folder of ``arch`` under ``cache`` (written on first use)."""
    folder = pathlib.Path(cache) / f"{arch}-{str(dtype).removeprefix('torch.')}"
    if (folder / "model_index.json").is_file():
        return folder
    pipe = BUILDERS[arch]()
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    tmp = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder
