"""img2img and inpaint on the one generation path: the same pixels as diffusers' own pipelines,
every tiny family, A1111's inpaint options judged on the output, odd inputs, refusals."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.jobs import GenerationRequest, RequestError, image_to_png
from webui.outputs import read_infotext
from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME
from webui.tasks import crop_region, fill_masked, flatten, mask_from_image, resize_image

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (DEMO_MODEL_DIR / "model_index.json").is_file()
SIDE = 64


def shapes_picture(size: int = 128) -> Image.Image:
    """A red circle on a blue background (the demo model's domain)."""
    image = Image.new("RGB", (size, size), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    return image


def centre_mask(size: int, margin: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (margin, margin, size - margin, size - margin))
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


# ------------------------------------------------------------------------------------------
# The same output as diffusers' pipelines (the demo model, fixed seed)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_pipeline():
    if not SHIPPED:
        pytest.skip("the demo model's weights are not in this checkout")
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(DEMO_MODEL_DIR, torch_dtype=torch.float32, local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)


def bare_call(pipe_class, pipe, **arguments):
    from webui.pipelines.schedulers import make_scheduler

    bare = pipe_class.from_pipe(pipe)
    bare.set_progress_bar_config(disable=True)
    bare.scheduler = make_scheduler(dict(pipe.scheduler.config), "Euler", "Automatic", "sd1", seed=arguments["seed"])
    seed = arguments.pop("seed")
    return bare(generator=[torch.Generator("cpu").manual_seed(seed)], num_images_per_prompt=1,
                output_type="pil", **arguments).images[0]


@pytest.mark.slow
def test_img2img_is_bit_identical_to_diffusers_img2img_pipeline(context, demo_pipeline):
    from diffusers import StableDiffusionImg2ImgPipeline

    start = shapes_picture()
    request = GenerationRequest(task="img2img", model=DEMO_MODEL_NAME, prompt="a large green square on a yellow "
                                "background", steps=10, cfg_scale=5.0, width=128, height=128, seed=11,
                                sampler="Euler", denoising_strength=0.6, init_image=image_to_png(start), save=False)
    easel = context.generate(request).images[0].image
    bare = bare_call(StableDiffusionImg2ImgPipeline, demo_pipeline, prompt=request.prompt, negative_prompt=None,
                     image=start, strength=0.6, num_inference_steps=10, guidance_scale=5.0, seed=11)
    assert np.array_equal(pixels(easel), pixels(bare))
    assert np.abs(pixels(easel) - pixels(start)).mean() > 10  # it did move away from the start image


@pytest.mark.slow
def test_inpaint_is_bit_identical_to_diffusers_inpaint_pipeline_inside_the_mask(context, demo_pipeline):
    from diffusers import StableDiffusionInpaintPipeline

    start = shapes_picture()
    mask = centre_mask(128, 24)
    request = GenerationRequest(task="inpaint", model=DEMO_MODEL_NAME, prompt="a large yellow star on a blue "
                                "background", steps=10, cfg_scale=5.0, width=128, height=128, seed=5,
                                sampler="Euler", denoising_strength=1.0, init_image=image_to_png(start),
                                mask=image_to_png(mask), mask_blur=0, save=False)
    easel = context.generate(request).images[0].image
    bare = bare_call(StableDiffusionInpaintPipeline, demo_pipeline, prompt=request.prompt, negative_prompt=None,
                     image=start, mask_image=mask, width=128, height=128, strength=1.0, num_inference_steps=10,
                     guidance_scale=5.0, seed=5)
    inside = np.asarray(mask) > 0
    assert np.array_equal(pixels(easel)[inside], pixels(bare)[inside])  # what diffusers painted, bit for bit
    assert np.array_equal(pixels(easel)[~inside], pixels(start)[~inside])  # and the rest is the original's
    assert np.abs(pixels(easel)[inside] - pixels(start)[inside]).mean() > 10


# ------------------------------------------------------------------------------------------
# Every task on every tiny family
# ------------------------------------------------------------------------------------------

TINY = ["tiny", "tiny-sd2", "tiny-sdxl", "tiny-sdxl-refiner", "tiny-sd3"]


def sampler_for(model: str) -> str:
    return "Flow Euler" if model == "tiny-sd3" else "Euler a"


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_img2img_and_inpaint_run_on_every_tiny_family(context, model):
    start = shapes_picture(SIDE)
    mask = centre_mask(SIDE, 16)
    for task in ("img2img", "inpaint"):
        request = GenerationRequest(task=task, model=model, prompt="a red circle", steps=2, width=SIDE, height=SIDE,
                                    seed=3, sampler=sampler_for(model), denoising_strength=0.9,
                                    init_image=image_to_png(start), mask=image_to_png(mask) if task == "inpaint"
                                    else None, mask_blur=0)
        result = context.generate(request)
        record = result.images[0]
        assert record.image.size == (SIDE, SIDE)
        assert Path(record.path).parent.parent.name == task  # outputs/<task>/<date>/
        info = read_infotext(Image.open(record.path))
        assert "Denoising strength: 0.9" in info and f"Model: {model}" in info
        if task == "inpaint":
            kept = np.asarray(mask) == 0
            assert np.array_equal(pixels(record.image)[kept], pixels(start)[kept])
            assert "Masked content: original" in info and "Mask mode: Inpaint masked" in info
    if model == "tiny-sdxl-refiner":
        with pytest.raises(RequestError, match="cannot draw from a prompt alone"):
            context.generate(GenerationRequest(model=model, prompt="x", steps=1, width=SIDE, height=SIDE, save=False))
    else:
        txt2img = context.generate(GenerationRequest(model=model, prompt="x", steps=1, width=SIDE, height=SIDE,
                                                     sampler=sampler_for(model)))
        assert Path(txt2img.images[0].path).parent.parent.name == "txt2img"


# ------------------------------------------------------------------------------------------
# A1111's inpaint options, judged on the output (tiny model, 2 steps)
# ------------------------------------------------------------------------------------------


def inpaint(context, start, mask, **options):
    values = dict(task="inpaint", model="tiny", prompt="x", steps=2, width=start.width, height=start.height, seed=9,
                  init_image=image_to_png(start), mask=image_to_png(mask), mask_blur=0, save=False)
    values.update(options)
    return context.generate(GenerationRequest(**values)).images[0]


@pytest.mark.slow
def test_mask_mode_invert_repaints_the_other_side(context):
    start = shapes_picture(SIDE)
    mask = centre_mask(SIDE, 16)
    inside = np.asarray(mask) > 0
    normal = pixels(inpaint(context, start, mask).image)
    inverted = inpaint(context, start, mask, inpainting_mask_invert=True)
    assert np.array_equal(normal[~inside], pixels(start)[~inside]) and not np.array_equal(normal[inside],
                                                                                           pixels(start)[inside])
    got = pixels(inverted.image)
    assert np.array_equal(got[inside], pixels(start)[inside]) and not np.array_equal(got[~inside],
                                                                                     pixels(start)[~inside])
    assert "Mask mode: Inpaint not masked" in inverted.infotext


@pytest.mark.slow
def test_mask_blur_softens_the_seam_and_only_masked_keeps_everything_outside_its_crop(context):
    start = shapes_picture(128)
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (80, 80, 104, 104))
    sharp = pixels(inpaint(context, start, mask).image)
    soft = pixels(inpaint(context, start, mask, mask_blur=6).image)
    ring = np.zeros((128, 128), bool)
    ring[74:110, 74:110] = True
    ring[80:104, 80:104] = False  # just outside the mask: only a blurred mask reaches it
    assert np.array_equal(sharp[ring], pixels(start)[ring])
    assert np.abs(soft[ring] - pixels(start)[ring]).max() > 0
    only = inpaint(context, start, mask, inpaint_full_res=True, inpaint_full_res_padding=8)
    box = crop_region(mask, 8, (128, 128))
    outside = np.ones((128, 128), bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.array_equal(pixels(only.image)[outside], pixels(start)[outside])
    inside = np.asarray(mask) > 0
    assert not np.array_equal(pixels(only.image)[inside], pixels(start)[inside])
    assert "Inpaint area: Only masked" in only.infotext and "Masked area padding: 8" in only.infotext


def test_masked_content_fills_start_from_what_they_say():
    start = shapes_picture(SIDE)
    mask = centre_mask(SIDE, 12)  # the whole red circle: only blue around the hole
    inside = np.asarray(mask) > 0
    original = pixels(start)
    filled = pixels(fill_masked(start, mask, "fill"))
    assert np.array_equal(filled[~inside], original[~inside])
    # colours flow in from around the hole: the red circle inside is replaced by the blue around it
    assert np.abs(filled[inside] - np.array([30, 60, 200])).max() <= 2
    assert original[inside][:, 0].mean() > 100
    noise = pixels(fill_masked(start, mask, "latent noise", seed=1))
    assert noise[inside].std() > 50 and np.array_equal(noise[~inside], original[~inside])
    grey = pixels(fill_masked(start, mask, "latent nothing"))
    assert np.all(np.abs(grey[inside] - 128) <= 1)
    assert fill_masked(start, mask, "original") is start


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="the demo model's weights are not in this checkout")
def test_masked_content_changes_what_the_repaint_starts_from(context):
    """On the demo model (a real VAE): at low strength the repaint stays near what it starts from."""
    start = shapes_picture(128)
    mask = centre_mask(128, 24)  # the whole red circle
    inside = np.asarray(mask) > 0
    distance = {}
    for index, fill in enumerate(("fill", "original", "latent noise", "latent nothing")):
        image = pixels(inpaint(context, start, mask, model=DEMO_MODEL_NAME, prompt="", inpainting_fill=index,
                               denoising_strength=0.3, steps=10, sampler="Euler").image)
        distance[fill] = np.abs(image[inside] - pixels(start)[inside]).mean()
    # measured: original 15.9, fill 75.1, latent noise 63.2, latent nothing 64.3 (mean |difference|, 0-255)
    assert distance["original"] < 30
    assert min(distance["fill"], distance["latent noise"], distance["latent nothing"]) > distance["original"] + 30


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


def test_resize_modes_follow_a1111():
    wide = Image.new("RGB", (200, 100), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 50, 100))  # a red band on the left quarter
    stretched = resize_image(wide, 64, 64, 0)
    cropped = resize_image(wide, 64, 64, 1)
    fitted = resize_image(wide, 64, 64, 2)
    assert stretched.size == cropped.size == fitted.size == (64, 64)
    assert pixels(stretched)[32, 5, 0] > 200  # stretched: the band still spans the left quarter
    assert pixels(cropped)[32, 5, 2] > 200  # crop and resize: the centre is kept, the band cut away
    assert pixels(fitted)[32, 5, 0] > 200 and pixels(fitted)[5, 32, 2] > 200  # fitted: whole image, bands filled


def test_odd_images_become_rgb_the_right_way_up():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert flatten(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent over white
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    assert flatten(palette).getpixel((0, 0)) == (10, 200, 30)
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert flatten(sixteen).getpixel((0, 0)) == 255
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert flatten(cmyk).convert("RGB").getpixel((0, 0))[0] > 200
    tall = Image.new("RGB", (10, 20), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 10, 5))  # white at the top
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tall.save(buffer, format="JPEG", exif=exif)
    upright = flatten(Image.open(buffer))
    assert upright.size == (20, 10) and np.asarray(upright)[:, -3:].mean() > 200  # the top is now on the right


def test_a_painted_mask_is_its_alpha_and_an_uploaded_one_its_brightness():
    painted = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (0, 0, 4, 8))
    assert np.asarray(mask_from_image(painted))[:, :4].min() == 255 and np.asarray(mask_from_image(painted))[:, 4:].max() == 0
    uploaded = Image.new("RGB", (8, 8), (0, 0, 0))
    uploaded.paste((255, 255, 255), (4, 0, 8, 8))
    assert np.asarray(mask_from_image(uploaded))[:, 4:].min() == 255


@pytest.mark.slow
def test_odd_inputs_run_and_a_mask_of_another_size_is_scaled(context):
    rgba = Image.new("RGBA", (96, 96), (200, 0, 0, 128))
    small_mask = centre_mask(32, 8)  # a third of the image's size: scaled to it
    result = inpaint(context, rgba, small_mask, width=SIDE, height=SIDE)
    assert result.image.size == (SIDE, SIDE)
    kept = np.asarray(centre_mask(SIDE, 16)) == 0
    expected = pixels(resize_image(flatten(rgba), SIDE, SIDE))
    assert np.array_equal(pixels(result.image)[kept], expected[kept])


@pytest.mark.parametrize("change, message", [
    (dict(init_image=None), "needs an initial image"),
    (dict(mask=None), "needs a mask"),
    (dict(denoising_strength=0.0), "denoising strength must be above 0"),
    (dict(denoising_strength=0.3, steps=2), "runs no denoising step"),
    (dict(mask_blur=100), "mask blur must be between 0 and 64"),
    (dict(inpainting_fill=7), "masked content must be 0-3"),
    (dict(resize_mode=5), "resize mode must be 0"),
    (dict(task="outpaint"), "unknown task 'outpaint'"),
])
def test_impossible_image_jobs_are_refused_with_a_message(context, change, message):
    values = dict(task="inpaint", model="tiny", prompt="x", steps=2, width=SIDE, height=SIDE,
                  init_image=image_to_png(shapes_picture(SIDE)), mask=image_to_png(centre_mask(SIDE, 16)), save=False)
    values.update(change)
    with pytest.raises(RequestError, match=re.escape(message)):
        context.generate(GenerationRequest(**values))


def test_an_empty_mask_and_a_corrupt_image_are_refused_with_a_message(context):
    values = dict(task="inpaint", model="tiny", prompt="x", steps=2, width=SIDE, height=SIDE, save=False,
                  init_image=image_to_png(shapes_picture(SIDE)))
    with pytest.raises(RequestError, match="The mask is empty"):
        context.generate(GenerationRequest(**values, mask=image_to_png(Image.new("L", (SIDE, SIDE), 0))))
    with pytest.raises(RequestError, match="the image could not be read"):
        context.generate(GenerationRequest(**{**values, "task": "img2img", "init_image": b"not a png"}))


def test_a_request_is_plain_data_that_survives_json(tmp_path):
    import json

    request = GenerationRequest(task="inpaint", init_image=image_to_png(shapes_picture(16)),
                                mask=image_to_png(centre_mask(16, 4)), denoising_strength=0.4, extras={"a": 1})
    again = GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request


def test_only_the_generation_core_calls_a_diffusers_pipeline_for_image_jobs():
    """One path: no other module of the running app passes a step callback to a pipeline."""
    offenders = []
    for folder in ("webui", "extensions"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("webui/training/"):
                continue  # training is not an image job (the developer tools live outside webui/)
            text = path.read_text(encoding="utf-8")
            if "callback_on_step_end=" in text and relative != "webui/generation.py":
                offenders.append(relative)
    assert offenders == []
    engine = (ROOT / "extensions" / "background" / "engine.py").read_text(encoding="utf-8")
    assert "num_inference_steps" not in engine and "from_pipe" not in engine
