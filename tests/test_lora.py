"""Using LoRA files in txt2img: picker, <lora:...> syntax, kohya and diffusers formats, infotext."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.api import ExtensionError, GenerationRequest, parse_infotext

SMALL = dict(width=64, height=64, steps=2, save=False)


def write_random_lora(path, family_model="tiny", kohya=True, seed=0, targets=("to_q", "to_k", "to_v", "to_out.0"),
                      up_scale=0.5):
    """A LoRA for a tiny model with random (non-zero) up weights of std ``up_scale``, as kohya or peft keys."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from webui.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family_model)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    with torch.random.fork_rng(devices=[]):  # the down (A) weights come from the global generator: seed it
        torch.default_generator.manual_seed(seed)
        denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(targets)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * up_scale)
    prefix = "unet" if hasattr(pipe, "unet") else "transformer"
    state = {f"{prefix}.{key}": value.contiguous() for key, value in get_peft_model_state_dict(denoiser).items()}
    if kohya:
        state = convert_state_dict_to_kohya(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def pixels(record):
    return np.asarray(record.image, dtype=np.int16)


def test_prompt_tags_are_taken_out():
    from extensions.lora import take_prompt_tags

    prompt, tags = take_prompt_tags("a cat, <lora:style:0.8>, sharp <LORA:other>")
    assert prompt == "a cat, sharp"
    assert tags == [("style", 0.8), ("other", 1.0)]
    with pytest.raises(ExtensionError):
        take_prompt_tags("<lora:x:abc>")


def test_lora_changes_image_and_leaves_no_trace(context):
    lora_folder = context.models_dir / "Lora"
    kohya_file = write_random_lora(lora_folder / "kohya_style.safetensors", kohya=True, seed=1)
    write_random_lora(lora_folder / "sub" / "peft_style.safetensors", kohya=False, seed=2)
    from extensions.lora import list_loras

    assert set(list_loras(context.models_dir)) == {"kohya_style", "peft_style"}

    def generate(prompt, **extras):
        return context.generate(GenerationRequest(prompt=prompt, model="tiny", seed=5, extras=extras, **SMALL)).images[0]

    base = generate("a cat")
    with_tag = generate("a cat <lora:kohya_style:1>")
    assert np.abs(pixels(with_tag) - pixels(base)).max() > 0
    prompt, _, params = parse_infotext(with_tag.infotext)
    from extensions.lora import addnet_hash

    assert params["Lora hashes"] == f"kohya_style: {addnet_hash(kohya_file)[:12]}"
    assert 'Lora hashes: "kohya_style: ' in with_tag.infotext
    assert prompt == "a cat"  # the tag was taken out before encoding

    # weight 0 and the next job without LoRA give the base image bit for bit
    assert np.array_equal(pixels(generate("a cat <lora:kohya_style:0>")), pixels(base))
    assert np.array_equal(pixels(generate("a cat")), pixels(base))

    # the picker: two LoRAs (kohya + diffusers format) with a weight each
    both = generate("a cat", **{"lora.names": ["kohya_style", "peft_style"], "lora.weights": "1.0, 0.5"})
    only_kohya = generate("a cat", **{"lora.names": ["kohya_style"], "lora.weights": "1.0"})
    assert np.abs(pixels(both) - pixels(only_kohya)).max() > 0
    assert "peft_style" in parse_infotext(both.infotext)[2]["Lora hashes"]
    assert np.array_equal(pixels(generate("a cat")), pixels(base))
    assert not any("lora" in name for name, _ in context.pipelines._loaded["tiny"].pipeline.unet.named_parameters())


def test_unknown_or_outside_lora_is_refused(context, tmp_path):
    write_random_lora(tmp_path / "outside.safetensors")
    for prompt in ("a cat <lora:nope:1>", f"a cat <lora:{tmp_path}/outside:1>", "<lora:../outside:1>"):
        with pytest.raises(ExtensionError, match="not found"):
            context.generate(GenerationRequest(prompt=prompt, model="tiny", seed=1, **SMALL))


def test_lora_weight_scales_how_far_the_image_moves(context):
    """Weight 0.5 moves the image about half as far from the base image as weight 1.0, and 0.25 about
    a quarter: the weight reaches the adapter, not just "on" or "off".

    The LoRA is small (up weights of std 0.1), so the UNet answers it almost linearly: measured
    RMS distances from the base image of about 2.6, 5.1 and 10 levels at weights 0.25, 0.5 and
    1.0. An implementation that treats every non-zero weight as 1.0 gives the ratio 1.0.
    """
    write_random_lora(context.models_dir / "Lora" / "gentle.safetensors", seed=1, up_scale=0.1)

    def generate(prompt):
        request = GenerationRequest(prompt=prompt, model="tiny", seed=5, **SMALL)
        return pixels(context.generate(request).images[0]).astype(np.float64)

    base = generate("a cat")
    distance = {weight: float(np.sqrt(((generate(f"a cat <lora:gentle:{weight}>") - base) ** 2).mean()))
                for weight in (0.25, 0.5, 1.0)}
    assert distance[1.0] > 5.0, distance  # the LoRA visibly moves the image at full weight
    assert 0.4 < distance[0.5] / distance[1.0] < 0.6, distance
    assert 0.15 < distance[0.25] / distance[1.0] < 0.35, distance
