"""PNG Info: reading the parameters of PNGs Easel wrote and of AUTOMATIC1111 infotext (PNG and
JPEG EXIF), other text chunks, odd files, and the values "Send to txt2img" fills."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from webui.api import GenerationRequest, build_infotext, save_image

A1111_INFOTEXT = (
    "masterpiece, best quality, a red fox in the snow, <lora:add_detail:0.6>, (sharp focus:1.2)\n"
    "Negative prompt: (worst quality:1.4), lowres, watermark\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, "
    'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.6.0'
)


def png_info():
    """The extension module as Easel loads it (a package under extensions/)."""
    import importlib

    return importlib.import_module("extensions.png_info")


def family_of(name):
    return {"tiny": "sd1", "tiny-sd3": "sd3", "my-model": "sd1"}.get(name)


def a1111_exif_jpeg(path, text):
    """A JPEG with the infotext in the EXIF UserComment, as A1111 writes it (piexif, UTF-16 big-endian)."""
    image = Image.new("RGB", (32, 48), (200, 40, 40))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    image.save(path, exif=exif.tobytes())
    return path


def test_a_png_easel_generated_reads_back_into_txt2img_values(context, tmp_path):
    module = png_info()
    request = GenerationRequest(model="tiny", prompt="a red fox, (snow:1.2)", negative_prompt="blurry", steps=3,
                                width=64, height=72, seed=77, cfg_scale=4.5, sampler="DPM++ 2M",
                                schedule_type="Karras", save=True)
    record = context.generate(request).images[0]
    assert record.path and record.path.endswith(".png")  # written by webui/outputs.py

    info = module.describe_image(record.path)
    assert info.readable and info.summary == "PNG, 64x72, RGB"
    assert info.infotext == record.infotext
    assert (info.prompt, info.negative_prompt) == ("a red fox, (snow:1.2)", "blurry")
    assert info.params["Model"] == "tiny" and info.params["Version"].startswith("Easel")
    values, notes = module.txt2img_values(info, ["tiny", "tiny-sd3"], family_of)
    assert notes == []
    assert values == {"prompt": "a red fox, (snow:1.2)", "negative_prompt": "blurry", "model": "tiny",
                      "sampler": "DPM++ 2M", "schedule_type": "Karras", "steps": 3, "cfg_scale": 4.5, "seed": 77,
                      "width": 64, "height": 72}
    status = module.status_text(info, values, notes)
    assert status.startswith("PNG, 64x72, RGB. Send to txt2img sets: prompt, negative prompt, model, sampler")


def test_easel_lora_weights_become_prompt_tags(tmp_path):
    module = png_info()
    infotext = build_infotext("a photo of sks dog", "", {
        "Steps": 20, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 7, "Seed": 1, "Size": "64x64",
        "Model": "tiny", "Lora hashes": "sks_dog: 0123456789ab, style: ba9876543210",
        "Lora weights": "sks_dog: 0.8, style: 1"})
    path = save_image(Image.new("RGBA", (64, 64), (0, 0, 255, 128)), tmp_path, "txt2img", infotext, 1)
    info = module.describe_image(path)
    assert info.summary == "PNG, 64x64, RGBA"  # an RGBA image reads like any other
    values, _ = module.txt2img_values(info, ["tiny"], family_of)
    assert values["prompt"] == "a photo of sks dog <lora:sks_dog:0.8> <lora:style:1>"


def test_a1111_infotext_in_a_png_and_in_a_jpeg_exif(tmp_path):
    module = png_info()
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", A1111_INFOTEXT)
    Image.new("RGB", (32, 48)).save(tmp_path / "a1111.png", pnginfo=chunk)
    jpeg = a1111_exif_jpeg(tmp_path / "a1111.jpg", A1111_INFOTEXT)
    for path, kind in ((tmp_path / "a1111.png", "PNG"), (jpeg, "JPEG")):
        info = module.describe_image(path)
        assert info.summary == f"{kind}, 32x48, RGB"
        assert info.infotext == A1111_INFOTEXT, path
        assert info.negative_prompt == "(worst quality:1.4), lowres, watermark"
        assert info.params["Clip skip"] == "2" and info.params["Lora hashes"] == "add_detail: 7c6bad76eb54"
        values, notes = module.txt2img_values(info, ["tiny", "my-model"], family_of)
        # the LoRA tag is already in A1111's prompt: not added twice
        assert values["prompt"] == info.prompt and values["prompt"].count("<lora:add_detail") == 1
        assert (values["sampler"], values["schedule_type"]) == ("DPM++ 2M", "Karras")  # legacy name split
        assert (values["steps"], values["cfg_scale"], values["seed"]) == (28, 6.5, 1234567890)
        assert (values["width"], values["height"]) == (512, 768)
        assert "model" not in values
        assert notes == ["model v1-5-pruned-emaonly is not listed here: txt2img keeps its model"]
        assert "Not sent: model v1-5-pruned-emaonly is not listed here" in module.status_text(info, values, notes)


def test_model_names_match_listed_files_and_unknown_samplers_are_reported():
    module = png_info()
    info = module.ImageInfo(summary="PNG", infotext="x", prompt="x",
                            params={"Model": "My-Model", "Sampler": "Flow Euler", "Steps": "twenty", "Size": "big"})
    values, notes = module.txt2img_values(info, ["tiny", "my-model.safetensors"], family_of)
    assert values["model"] == "my-model.safetensors"
    assert "sampler" not in values and "steps" not in values and "width" not in values
    assert notes == ["sampler Flow Euler (Automatic) does not work with sd1 models here: txt2img keeps its sampler",
                     "Steps 'twenty' is not a number", "Size 'big' is not WIDTHxHEIGHT"]


def test_other_text_chunks_are_listed(tmp_path):
    module = png_info()
    chunk = PngImagePlugin.PngInfo()
    workflow = json.dumps({"nodes": [{"id": 3, "type": "KSampler"}]})
    chunk.add_text("workflow", workflow)
    chunk.add_itxt("Comment", "drawn by hand, café", zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=chunk)
    info = module.describe_image(tmp_path / "comfy.png")
    assert not info.has_parameters
    assert info.other_texts == {"workflow": workflow, "Comment": "drawn by hand, café"}
    values, notes = module.txt2img_values(info, ["tiny"], family_of)
    assert values == {} and notes == []
    status = module.status_text(info, values, notes)
    assert "No generation parameters in this image" in status and "It has other text: workflow, Comment." in status


@pytest.mark.parametrize("kind", ["plain", "corrupt", "text", "truncated", "bomb"])
def test_odd_files_give_a_clear_message(tmp_path, kind, monkeypatch):
    module = png_info()
    path = tmp_path / "odd.png"
    if kind == "plain":
        Image.fromarray(np.zeros((10, 12, 4), np.uint8), "RGBA").save(path)
    elif kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif kind == "text":
        path.write_text("this is not an image")
    elif kind == "bomb":  # more pixels than Pillow's decompression-bomb limit
        Image.new("RGB", (64, 64)).save(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    else:
        full = tmp_path / "full.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
        path.write_bytes(full.read_bytes()[:300])
    info = module.describe_image(path)
    status = module.status_text(info, *module.txt2img_values(info, ["tiny"], family_of))
    if kind == "plain":
        assert info.readable and status.startswith("PNG, 12x10, RGBA. No generation parameters in this image")
    else:
        assert not info.readable and status.startswith("odd.png is not an image this server can read ("), status


def test_send_button_is_wired_to_txt2img_and_hidden_without_it(make_context):
    from webui.app import create_blocks

    def send_button(blocks):
        return next(c for c in blocks.config["components"] if c["props"].get("elem_id") == "png-info-send-txt2img")

    blocks = create_blocks(make_context())
    button = send_button(blocks)
    assert button["props"]["visible"] is True
    prompt = next(c for c in blocks.config["components"] if c["props"].get("elem_id") == "txt2img-prompt")
    sends = [d for d in blocks.config["dependencies"] if button["id"] in [t[0] for t in d["targets"]]]
    assert len(sends) == 1 and prompt["id"] in sends[0]["outputs"]

    blocks = create_blocks(make_context(disabled_extensions={"txt2img"}))
    assert send_button(blocks)["props"]["visible"] is False  # nothing to send to
