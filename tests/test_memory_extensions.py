"""Memory extensions: each option changes the pipeline as claimed, exact ones keep the image,
conflicts and unavailable options are refused with a reason, presets and flags map onto options."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from webui.api import ExtensionError, GenerationRequest, is_available, option_availability, parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(**overrides):
    values = dict(model="tiny", prompt="a red fox", steps=2, width=64, height=64, seed=5, save=False)
    values.update(overrides)
    return GenerationRequest(**values)


def draw(context, **overrides):
    result = context.generate(request(**overrides))
    return np.asarray(result.images[0].image).astype(np.float64), result.images[0].infotext


def configured(context, **settings):
    context.settings.update(settings)
    context.pipelines.reconfigure()
    return context.pipelines.use("tiny")


def processors(pipe):
    return {type(p).__name__ for p in pipe.unet.attn_processors.values()}


# ----- attention -----------------------------------------------------------------------------

def test_sdpa_is_the_default_attention(context):
    with context.pipelines.use("tiny") as model:
        assert processors(model.pipeline) == {"AttnProcessor2_0"}


@pytest.mark.parametrize("size, expected", [("max", 1), ("auto", None), ("1", 1)])
def test_sliced_attention_installs_sliced_processors(context, size, expected):
    with configured(context, **{"attention.backend": "sliced", "attention.slice_size": size}) as model:
        procs = list(model.pipeline.unet.attn_processors.values())
        assert {type(p).__name__ for p in procs} == {"SlicedAttnProcessor"}
        if expected is not None:
            assert {p.slice_size for p in procs} == {expected}


def test_bad_slice_size_is_refused_with_a_message(context):
    context.settings.update({"attention.backend": "sliced", "attention.slice_size": "lots"})
    with pytest.raises(ExtensionError, match="auto, max or a number"):
        context.generate(request())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_xformers_is_unavailable_on_cpu_with_the_reason(context):
    assert "xformers needs CUDA" in is_available(context, "attention.backend", "xformers")
    context.settings.update({"attention.backend": "xformers"})
    with pytest.raises(ExtensionError, match="xformers needs CUDA"):
        context.generate(request())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_xformers_processors_on_cuda(make_context):
    pytest.importorskip("xformers")
    context = make_context(device="cuda")
    with configured(context, **{"attention.backend": "xformers"}) as model:
        assert processors(model.pipeline) == {"XFormersAttnProcessor"}


# ----- VAE ------------------------------------------------------------------------------------

def test_vae_tile_size_must_be_a_multiple_of_64(context):
    context.settings.update({"vae.tiling": "on", "vae.tile_size": 100})
    with pytest.raises(ExtensionError, match="multiple of 64"):
        context.generate(request())


def test_vae_slicing_and_auto_tiling_follow_the_threshold(context):
    context.settings.update({"vae.slicing": True, "vae.tiling": "auto", "vae.tiling_threshold": 96})
    _, small_info = draw(context, width=64, height=64)
    with context.pipelines.use("tiny") as model:
        assert model.pipeline.vae.use_slicing and not model.pipeline.vae.use_tiling
    _, large_info = draw(context, width=128, height=64)
    with context.pipelines.use("tiny") as model:
        assert model.pipeline.vae.use_tiling
    assert "VAE tiling: on" in large_info and "VAE tiling" not in small_info


# ----- offload --------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
@pytest.mark.parametrize("mode", ["model", "sequential", "group-block", "group-leaf", "auto"])
def test_offload_is_unavailable_on_cpu_with_the_reason(context, mode):
    assert "needs a GPU" in is_available(context, "offload.mode", mode)
    context.settings.update({"offload.mode": mode})
    with pytest.raises(ExtensionError, match="offload needs a GPU"):
        context.generate(request())


def _fake_model(context, device="cuda"):
    """A loaded tiny model that claims a CUDA device: hooks are installed without running."""
    from webui.api import LoadedModel
    from webui.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny")
    source = context.pipelines.catalog.resolve("tiny")
    return LoadedModel(source=source, family="sd1", pipeline=pipe, device=torch.device(device),
                       dtype=torch.float32, base_scheduler_config=dict(pipe.scheduler.config))


def _extension(context, name):
    return context.plugins.pm.get_plugin(name)


def _hooked(module, name="group_offloading"):
    return [sub for sub in module.modules()
            if getattr(sub, "_diffusers_hook", None) is not None and sub._diffusers_hook.get_hook(name) is not None]


@pytest.mark.parametrize("mode", ["group-leaf", "group-block"])
def test_group_offload_installs_diffusers_hooks(context, mode):
    context.settings.update({"offload.mode": mode})
    model = _fake_model(context)
    _extension(context, "offload").configure_pipeline(model=model, context=context)
    assert model.placement_done and model.extension_state["offload"] == mode
    unet = model.pipeline.unet
    hooked = _hooked(unet)
    if mode == "group-leaf":
        assert unet.conv_in in hooked and len(hooked) > 20  # every leaf layer
    else:
        assert unet.down_blocks[0] in hooked or unet in hooked
    assert _hooked(model.pipeline.text_encoder) and _hooked(model.pipeline.vae)
    hook = hooked[0]._diffusers_hook.get_hook("group_offloading")
    assert hook.group.onload_device == torch.device("cuda") and str(hook.group.offload_device) == "cpu"
    assert {p.device.type for p in unet.parameters()} == {"cpu"}  # waits on the CPU until its group runs


def test_offload_auto_picks_by_budget(context):
    offload = _extension(context, "offload")
    model = _fake_model(context)
    from webui.api import module_bytes, pipeline_modules

    sizes = [module_bytes(m) for m in pipeline_modules(model.pipeline).values()]
    total, largest = sum(sizes), max(sizes)
    assert offload.choose_auto(model, budget=total * 4, free=None)[0] == "none"
    assert offload.choose_auto(model, budget=int(largest * 1.6), free=None)[0] == "model"
    assert offload.choose_auto(model, budget=largest // 2, free=total * 10)[0] == "group-leaf"
    assert parse_size("6GB") == 6 * 1024**3 and parse_size("512MB") == 512 * 1024**2 and parse_size("") is None


def test_conflicting_offload_and_compile_or_bnb_int8_are_refused(context):
    model = _fake_model(context)
    context.settings.update({"offload.mode": "sequential", "speed.compile": True})
    with pytest.raises(ExtensionError, match="do not combine"):
        _extension(context, "offload").configure_pipeline(model=model, context=context)
    with pytest.raises(ExtensionError, match="do not combine"):
        _extension(context, "speed").configure_pipeline(model=model, context=context)
    context.settings.update({"speed.compile": False, "quantization.method": "bnb-int8"})
    with pytest.raises(ExtensionError, match="cannot be moved to the CPU"):
        _extension(context, "offload").configure_pipeline(model=model, context=context)


# ----- quantization ---------------------------------------------------------------------------

def test_quanto_int8_quantizes_unet_and_text_encoder(context):
    pytest.importorskip("optimum.quanto")
    with configured(context, **{"quantization.method": "quanto-int8", "quantization.text_encoders": True}) as model:
        unet_types = {type(m).__name__ for m in model.pipeline.unet.modules()}
        text_types = {type(m).__name__ for m in model.pipeline.text_encoder.modules()}
        assert {"QLinear", "QConv2d"} <= unet_types and "QLinear" in text_types
    plain = configured(context, **{"quantization.method": "none"})
    with plain as model:
        assert "QLinear" not in {type(m).__name__ for m in model.pipeline.unet.modules()}
    context.settings.update({"quantization.method": "quanto-int8", "quantization.text_encoders": False})
    context.pipelines.reconfigure()
    image, info = draw(context)
    assert "Quantization: quanto-int8" in info and image.std() > 0


def test_fp8_storage_stores_weights_in_float8(context):
    with configured(context, **{"quantization.method": "fp8-storage"}) as model:
        dtypes = {p.dtype for p in model.pipeline.unet.parameters()}
        assert torch.float8_e4m3fn in dtypes
        # norms stay in the compute dtype (diffusers' skip patterns)
        assert model.pipeline.unet.conv_norm_out.weight.dtype == torch.float32
    image, info = draw(context)
    assert "Quantization: fp8-storage" in info


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
@pytest.mark.parametrize("method", ["bnb-nf4", "bnb-int8"])
def test_bitsandbytes_is_unavailable_on_cpu_with_the_reason(context, method):
    assert "bitsandbytes needs CUDA" in option_availability(context)[f"quantization.method={method}"]
    context.settings.update({"quantization.method": method})
    with pytest.raises(ExtensionError, match="bitsandbytes needs CUDA"):
        context.generate(request())


# ----- speed ----------------------------------------------------------------------------------

def test_channels_last_and_regional_compile(context):
    with configured(context, **{"speed.channels_last": True, "speed.compile": True}) as model:
        weight = model.pipeline.unet.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        blocks = [m for m in model.pipeline.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
        assert blocks and all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)


# ----- exactness ------------------------------------------------------------------------------

EXACT = [
    {"attention.backend": "sliced", "attention.slice_size": "max"},
    {"attention.backend": "sliced", "attention.slice_size": "auto"},
    {"vae.slicing": True},
    {"speed.channels_last": True},
]


def draw_counting_decodes(context, **overrides):
    """A batch of two images (as one float array) and how many times the VAE decoder ran for it.

    diffusers slices the VAE decode only when the batch holds more than one image, so an
    exactness check of VAE slicing needs a batch of at least two, and the decoder count shows
    that the sliced path was taken (one decoder call per image instead of one per batch).
    """
    calls = []
    with context.pipelines.use("tiny") as model:
        hook = model.pipeline.vae.decoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        result = context.generate(request(batch_size=2, **overrides))
    finally:
        hook.remove()
    images = np.stack([np.asarray(record.image) for record in result.images]).astype(np.float64)
    return images, calls


@pytest.mark.parametrize("settings", EXACT, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_exact_profiles_give_the_image_of_none(context, settings):
    reference, reference_decodes = draw_counting_decodes(context)
    assert reference_decodes == [2]  # without slicing: the batch of two decoded at once
    context.settings.update(settings)
    context.pipelines.reconfigure()
    image, decodes = draw_counting_decodes(context)
    assert decodes == ([1, 1] if settings.get("vae.slicing") else [2])
    assert np.abs(image - reference).max() <= 1.0  # one 8-bit level at most (float rounding)


# ----- presets, flags, allocator --------------------------------------------------------------

def test_lowvram_flag_maps_onto_options_and_infotext(make_context):
    from launch import parse_args
    from webui.server import memory_overrides

    args, _ = parse_args(["--lowvram", "--vram-budget", "6GB"])
    overrides = memory_overrides(args)
    assert overrides == {"presets.profile": "lowvram", "offload.vram_budget": "6GB"}
    context = make_context(setting_overrides=overrides)
    from webui.api import option_value

    assert option_value(context, "vae.tiling") == "on" and option_value(context, "vae.slicing") is True
    assert option_value(context, "offload.mode") == ("group-leaf" if torch.cuda.is_available() else "none")
    _, info = draw(context)
    assert "Memory profile: lowvram" in info and "VAE tiling: 256px" in info
    with context.pipelines.use("tiny") as model:
        vae = model.pipeline.vae
        assert vae.use_slicing and vae.use_tiling
        assert vae.tile_sample_min_size == 256 and vae.tile_latent_min_size == 32
    assert not (context.data_dir / "config.json").exists() or "lowvram" not in (
        context.data_dir / "config.json").read_text()


def test_medvram_preset(make_context):
    context = make_context(setting_overrides={"presets.profile": "medvram"})
    from webui.api import option_value

    assert option_value(context, "vae.tiling") == "auto" and option_value(context, "vae.slicing") is True


def test_allocator_conf_is_set_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    code = ("import sys, os; import webui; assert 'torch' not in sys.modules; "
            "print(os.environ['PYTORCH_CUDA_ALLOC_CONF'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "expandable_segments:True"
    code = ("import sys, os, launch; assert 'torch' not in sys.modules; launch.os.environ.pop('X', None); "
            "launch.main.__code__; import webui.server; print(os.environ['PYTORCH_CUDA_ALLOC_CONF'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("expandable_segments:True")


def test_settings_page_lists_memory_options(context):
    keys = {spec.key for spec in context.settings.specs if spec.section == "Memory"}
    assert {"attention.backend", "vae.tiling", "offload.mode", "quantization.method", "presets.profile"} <= keys


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU reasons")
def test_settings_tab_says_why_options_are_unavailable(context):
    import json as _json

    from webui.app import create_blocks

    blocks = create_blocks(context)
    text = _json.dumps(blocks.config, default=str)
    # each reason once per setting, even where several values share it (offload: five modes, bnb: two)
    for reason in ("xformers needs CUDA", "offload needs a GPU", "bitsandbytes needs CUDA"):
        assert text.count(reason) == 1, (reason, text.count(reason))
    offload = next(c["props"]["info"] for c in blocks.config["components"] if c["props"].get("label") == "CPU offload")
    assert offload.count("Unavailable here") == 1
    assert "model, sequential, group-block, group-leaf, auto — offload needs a GPU" in offload, offload


def test_unavailable_note_names_each_reason_once():
    from webui.ui.shell import unavailable_note

    reasons = {"offload.mode=model": "needs a GPU", "offload.mode=auto": "needs a GPU",
               "offload.mode=group-leaf": "needs diffusers 0.33", "offload.modes": "another setting",
               "speed.compile": "needs a C compiler"}
    assert unavailable_note("offload.mode", reasons) == ("Unavailable here: model, auto — needs a GPU; "
                                                         "group-leaf — needs diffusers 0.33.")
    assert unavailable_note("speed.compile", reasons) == "Unavailable here: needs a C compiler."
    assert unavailable_note("vae.tiling", reasons) == ""
