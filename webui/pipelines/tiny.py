"""Built-in offline models: tiny diffusers pipelines with random weights.

Each tiny model is a real diffusers pipeline of one family (SD1, SD2, SDXL, SDXL refiner,
SD3) whose components are built from small configs with random, *deterministic* weights.
Nothing is downloaded: tokenizers come from files shipped in ``tiny_assets/`` (CLIP) or are
built in code (T5).  The test suite uses them, and users can pick them to try the UI offline.

The images they make are noise-like (the weights are random), but every code path of the
real family runs: prompt encoding, classifier-free guidance, the scheduler, the VAE with its
real downsampling factor of 8, save/load and single-file export (``webui.pipelines.export``).

Choices that matter to the rest of the app:

* Every VAE has 4 resolution levels, so ``pipe.vae_scale_factor == 8`` as in the real models
  (a 512x512 image runs the UNet on 64x64 latents, not 256x256).
* The architectures are shaped so that the exported single-file checkpoints are classified by
  ``diffusers.loaders.single_file_utils.infer_diffusers_model_type`` like the real families:
  tiny-sd2 has a 1024-wide text encoder and cross-attention in the first UNet level
  (``"v2"``), the SDXL text encoder 2 has 10 layers (``"xl_base"`` / ``"xl_refiner"``), and
  the SD3 transformer has 38 (very narrow) joint blocks with RMS q/k norm (``"sd35_large"``,
  the only SD3 signature that does not need a 1536-wide transformer).
* Text encoders of the two CLIP roles have different widths (32 and 64): diffusers' single-file
  loader tells them apart by width.
* Schedulers use the standard SD noise schedule (``scaled_linear`` betas 0.00085..0.012, 1000
  steps) and carry ``clip_sample=False`` in their config so that a DDIM scheduler made with
  ``from_config`` does not clip.
"""

from __future__ import annotations

import os
import pathlib
import string
import threading
import zlib
from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = ["TINY_MODELS", "build_tiny_pipeline", "save_tiny_pipeline"]

#: Name of each built-in tiny model -> model family (kept in families, which imports no diffusers).
from webui.pipelines.families import TINY_MODELS  # noqa: E402

ASSETS_DIR = pathlib.Path(__file__).with_name("tiny_assets")
CLIP_TOKENIZER_DIR = ASSETS_DIR / "clip_tokenizer"

# Standard Stable Diffusion noise schedule (as in the real SD1.x / SD2.x / SDXL configs).
_SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    # Not a parameter of every scheduler, but kept in the config so that
    # DDIMScheduler.from_config(pipe.scheduler.config) does not default to clip_sample=True.
    "clip_sample": False,
}

_CLIP_MAX_LENGTH = 77


# --------------------------------------------------------------------------------------------
# Deterministic construction
# --------------------------------------------------------------------------------------------


# Serialises tiny builds: they temporarily re-seed the process-wide CPU generator.
_BUILD_LOCK = threading.RLock()


def _seeded(key: str, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a module (on the CPU, float32) with a seed derived from ``key``.

    The library's own weight initialisation runs on the global CPU generator, re-seeded inside
    ``fork_rng`` so the caller's state is restored afterwards.  Only the CPU generator is
    seeded (``torch.manual_seed`` would also reset the CUDA generators, which ``fork_rng``
    with ``devices=[]`` does not restore).
    """
    seed = zlib.crc32(key.encode("utf-8"))
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        module = factory()
    return module.eval()


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def _clip_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP tokenizer without merges (one token per character, 514 tokens)."""
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), model_max_length=_CLIP_MAX_LENGTH)


def _t5_tokenizer() -> T5Tokenizer:
    """Tiny Unigram T5 tokenizer built in code (printable ASCII characters, no download)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": _CLIP_MAX_LENGTH,
    }


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def _clip_config(tokenizer: CLIPTokenizer, hidden: int, layers: int, heads: int, act: str,
                 intermediate: int | None = None, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_act=act,
        projection_dim=projection or hidden,
        layer_norm_eps=1e-5,
        **_clip_ids(tokenizer),
    )


def _sd_vae(sample_size: int, scaling_factor: float, latent_channels: int = 4, **extra: Any) -> AutoencoderKL:
    # 4 levels -> downsampling factor 8, like the real SD VAEs; tiny channel counts.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        **extra,
    )


def _sdxl_unet(cross_attention_dim: int, n_time_ids: int, pooled_dim: int) -> UNet2DConditionModel:
    time_embed_dim = 8
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=n_time_ids * time_embed_dim + pooled_dim,
        norm_num_groups=8,
    )


def _build_sd1() -> StableDiffusionPipeline:
    tokenizer = _clip_tokenizer()
    text_encoder = _seeded("sd1/text_encoder", lambda: CLIPTextModel(
        _clip_config(tokenizer, hidden=32, layers=3, heads=4, act="quick_gelu")))
    unet = _seeded("sd1/unet", lambda: UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=8,
    ))
    vae = _seeded("sd1/vae", lambda: _sd_vae(sample_size=512, scaling_factor=0.18215))
    scheduler = PNDMScheduler.from_config(_SD_SCHEDULE)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _build_sd2() -> StableDiffusionPipeline:
    tokenizer = _clip_tokenizer()
    # OpenCLIP-H-like: gelu, 1024 wide (diffusers recognises SD2 by 1024-wide cross-attention).
    text_encoder = _seeded("sd2/text_encoder", lambda: CLIPTextModel(
        _clip_config(tokenizer, hidden=1024, layers=2, heads=16, act="gelu", intermediate=64, projection=512)))
    unet = _seeded("sd2/unet", lambda: UNet2DConditionModel(
        sample_size=96,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        # Cross-attention at the full-resolution level is what diffusers checks for SD2
        # (input_blocks.2.1); the up path skips it there to keep 768 px affordable on a CPU.
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=1024,
        norm_num_groups=8,
    ))
    vae = _seeded("sd2/vae", lambda: _sd_vae(sample_size=768, scaling_factor=0.18215))
    scheduler = DDIMScheduler.from_config({**_SD_SCHEDULE, "prediction_type": "v_prediction"})
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _sdxl_text_encoder_2(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    # OpenCLIP-bigG-like; 10 layers so that diffusers' SDXL signature key (resblocks.9) exists.
    return _seeded("sdxl/text_encoder_2", lambda: CLIPTextModelWithProjection(
        _clip_config(tokenizer, hidden=64, layers=10, heads=4, act="gelu", projection=64)))


def _sdxl_vae() -> AutoencoderKL:
    # Shared by tiny-sdxl and tiny-sdxl-refiner, so the refiner can work on the base's latents.
    return _seeded("sdxl/vae", lambda: _sd_vae(sample_size=1024, scaling_factor=0.13025))


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(
        {**_SD_SCHEDULE, "interpolation_type": "linear", "use_karras_sigmas": False})


def _build_sdxl() -> StableDiffusionXLPipeline:
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    text_encoder = _seeded("sdxl/text_encoder", lambda: CLIPTextModel(
        _clip_config(tokenizer, hidden=32, layers=3, heads=4, act="quick_gelu")))
    text_encoder_2 = _sdxl_text_encoder_2(tokenizer_2)
    unet = _seeded("sdxl/unet", lambda: _sdxl_unet(
        cross_attention_dim=32 + 64, n_time_ids=6, pooled_dim=text_encoder_2.config.projection_dim))
    return StableDiffusionXLPipeline(
        vae=_sdxl_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_sdxl_scheduler(), image_encoder=None,
        feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def _build_sdxl_refiner() -> StableDiffusionXLImg2ImgPipeline:
    tokenizer_2 = _clip_tokenizer()
    text_encoder_2 = _sdxl_text_encoder_2(tokenizer_2)
    unet = _seeded("sdxl-refiner/unet", lambda: _sdxl_unet(
        cross_attention_dim=text_encoder_2.config.hidden_size, n_time_ids=5,
        pooled_dim=text_encoder_2.config.projection_dim))
    return StableDiffusionXLImg2ImgPipeline(
        vae=_sdxl_vae(), text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_sdxl_scheduler(), image_encoder=None,
        feature_extractor=None, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def _build_sd3() -> StableDiffusion3Pipeline:
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    tokenizer_3 = _t5_tokenizer()

    def clip_l() -> CLIPTextModelWithProjection:
        model = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden=32, layers=3, heads=4, act="quick_gelu"))
        # diffusers' single-file loader sets the CLIP-L projection of SD3 checkpoints to identity.
        with torch.no_grad():
            model.text_projection.weight.copy_(torch.eye(32))
        return model

    text_encoder = _seeded("sd3/text_encoder", clip_l)
    text_encoder_2 = _seeded("sd3/text_encoder_2", lambda: CLIPTextModelWithProjection(
        _clip_config(tokenizer_2, hidden=64, layers=3, heads=4, act="gelu", projection=64)))
    t5_width = 128  # >= 32 + 64: the CLIP embeddings are zero-padded to the T5 width
    text_encoder_3 = _seeded("sd3/text_encoder_3", lambda: T5EncoderModel(T5Config(
        vocab_size=128,
        d_model=t5_width,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id,
        decoder_start_token_id=tokenizer_3.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
    )))
    transformer = _seeded("sd3/transformer", lambda: SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=38,  # SD3.5-Large depth (its signature key is joint_blocks.37), but 32 wide
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        caption_projection_dim=32,
        pooled_projection_dim=32 + 64,
        pos_embed_max_size=128,
        qk_norm="rms_norm",
    ))
    vae = _seeded("sd3/vae", lambda: _sd_vae(
        sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, latent_channels=16,
        use_quant_conv=False, use_post_quant_conv=False))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "tiny": _build_sd1,
    "tiny-sd2": _build_sd2,
    "tiny-sdxl": _build_sdxl,
    "tiny-sdxl-refiner": _build_sdxl_refiner,
    "tiny-sd3": _build_sd3,
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def build_tiny_pipeline(name: str, torch_dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """Build the built-in tiny pipeline ``name`` (a key of :data:`TINY_MODELS`).

    The weights are random but identical on every call: each component is created in float32
    under its own fixed seed inside ``torch.random.fork_rng``, so the caller's global RNG state
    is neither used nor changed (builds are serialised by a lock; another thread drawing from
    the global CPU generator *during* a build would still interfere).  Components shared by a
    family use the same seed, e.g. tiny-sdxl-refiner has exactly the VAE and OpenCLIP text
    encoder of tiny-sdxl.  The pipeline is then cast to ``torch_dtype`` and returned on the
    CPU, in eval mode.  Nothing is downloaded.

    Raises:
        KeyError: ``name`` is not a tiny model.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)}") from None
    pipe = builder()
    if torch_dtype != torch.float32:
        pipe = pipe.to(dtype=torch_dtype)
    return pipe


def save_tiny_pipeline(name: str, folder: str | os.PathLike) -> pathlib.Path:
    """Write tiny model ``name`` as a diffusers folder (``save_pretrained``, safetensors; the CLIP
    text encoders under the official ``text_model.*`` key names, as every folder Easel writes).

    The folder can be loaded with ``DiffusionPipeline.from_pretrained(folder)`` and also serves
    as the ``config=`` folder for ``from_single_file`` on a checkpoint written by
    :func:`webui.pipelines.export.export_single_file`.  Returns the folder as a ``Path``.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from webui.pipelines.text_encoder_keys import save_pipeline

    save_pipeline(build_tiny_pipeline(name), folder)
    return folder
