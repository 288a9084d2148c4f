"""End to end background replacement on tiny models: the subject stays pixel-identical, the rest changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extensions.background import engine, masks, registry
from webui.api import RequestError, read_infotext
from webui.tasks import task_pipeline


def scene(width=128, height=96, seed=0):
    rng = np.random.default_rng(seed)
    data = np.zeros((height, width, 3), np.uint8)
    data[:] = (30, 60, 200)
    data[24:72, 40:96] = rng.integers(100, 256, (48, 56, 3), dtype=np.uint8)  # textured subject
    truth = np.zeros((height, width), bool)
    truth[24:72, 40:96] = True
    return Image.fromarray(data), truth


def options(**overrides):
    values = dict(background_prompt="a sunny beach", negative_prompt="blurry", model="tiny", steps=3, cfg_scale=5.0,
                  seed=123, erode=3, feather=4, decontaminate=0.5, work_side=128)
    values.update(overrides)
    return engine.ReplaceOptions(**values)


@pytest.mark.parametrize("model", ["tiny", pytest.param("tiny-sd2", marks=pytest.mark.slow),
                                   pytest.param("tiny-sdxl", marks=pytest.mark.slow),
                                   pytest.param("tiny-sdxl-refiner", marks=pytest.mark.slow),
                                   pytest.param("tiny-sd3", marks=pytest.mark.slow)])
def test_replace_keeps_the_eroded_subject_identical_and_changes_the_background(context, model):
    image, truth = scene()
    sampler = "Flow Euler" if model == "tiny-sd3" else "Euler a"
    result = engine.replace_background(context, image, truth, options(model=model, sampler=sampler))
    src, out = np.asarray(image), np.asarray(result.image)
    core = masks.grow(truth, -3)
    assert result.image.size == image.size
    assert np.array_equal(out[core], src[core])
    background = ~masks.grow(truth, 2)
    changed = np.abs(out[background].astype(int) - src[background].astype(int)).sum(axis=1) > 10
    assert changed.mean() > 0.9
    assert result.path and result.mask_path
    saved = Image.open(result.path)
    info = read_infotext(saved)
    assert "a sunny beach" in info and "Steps: 3" in info and "Seed: 123" in info and "Denoising strength: 1.0" in info
    assert f"Model: {model}" in info
    assert np.array_equal(masks.image_to_mask(Image.open(result.mask_path)), truth)
    assert "/img2img-bg/" in result.path.replace("\\", "/")


def deterministic_vae_encoder(vae):
    """Make ``vae``'s posterior a point (log-variance -30): encoding the input gives its mean, bit for bit.

    The tiny VAE's random weights give latents a standard deviation near 1, so the latents the
    inpainting pipeline samples for the kept area would otherwise be noisy copies of the input's.
    """
    import torch

    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -30.0


def latent_cells(pixel_mask, factor=8):
    """Latent cells (``factor`` x ``factor`` pixel blocks) that ``pixel_mask`` covers completely."""
    height, width = pixel_mask.shape
    blocks = pixel_mask[:height - height % factor, :width - width % factor]
    return blocks.reshape(height // factor, factor, width // factor, factor).all(axis=(1, 3))


def test_inpainting_keeps_the_subject_latents_and_repaints_the_background_ones(context):
    """Before the paste-back: the latents the pipeline decodes are the input's own on the subject and
    new ones on the background. (The paste-back would hide a repainted subject, and on a tiny
    model's random VAE a kept background looks no closer to the input than a repainted one, so
    the latents are where kept and repainted are told apart.)
    """
    import torch

    image, truth = scene()
    decoded = []
    with context.pipelines.use("tiny") as model:
        vae = model.pipeline.vae
        deterministic_vae_encoder(vae)
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            input_latents = vae.encode(pixels).latent_dist.mean[0]
        hook = vae.post_quant_conv.register_forward_pre_hook(lambda module, args: decoded.append(args[0].detach()))
    try:
        result = engine.replace_background(context, image, truth, options(save=False))
    finally:
        hook.remove()
    assert len(decoded) == 1 and decoded[0].shape[1:] == input_latents.shape
    change = (decoded[0][0] - input_latents).abs().amax(dim=0).numpy()
    kept = latent_cells(masks.grow(truth, -3))  # the eroded subject, which is not repainted
    repainted = latent_cells(~masks.grow(truth, 3))
    assert kept.sum() >= 20 and repainted.sum() >= 100
    assert change[kept].max() < 1e-3, change[kept].max()  # measured 1e-4 (float rounding)
    assert change[repainted].min() > 1.0, change[repainted].min()  # measured 22 at the least
    # and the paste-back puts the input on the subject and leaves the new background alone
    out, generated = np.asarray(result.image), np.asarray(result.generated)
    core = masks.grow(truth, -3)
    background = ~masks.grow(truth, 3 + 4 + 1)  # outside the feathered ring
    assert np.array_equal(out[core], np.asarray(image)[core])
    assert np.array_equal(out[background], generated[background])


def test_large_input_is_inpainted_small_and_returned_at_input_size(context):
    image, truth = scene(512, 384)
    truth = np.zeros((384, 512), bool)
    truth[96:288, 160:384] = True
    result = engine.replace_background(context, image, truth, options(work_side=128, save=False))
    assert result.image.size == (512, 384) and result.generated.size == (128, 96)
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(result.image)[core], np.asarray(image)[core])
    assert "Inpaint size: 128x96" in result.infotext


def test_same_seed_same_image_and_bad_requests_are_clear(context):
    image, truth = scene()
    first = engine.replace_background(context, image, truth, options(save=False))
    second = engine.replace_background(context, image, truth, options(save=False))
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    with pytest.raises(RequestError, match="empty"):
        engine.replace_background(context, image, np.zeros_like(truth), options())
    with pytest.raises(RequestError, match="whole image"):
        engine.replace_background(context, image, np.ones_like(truth), options())
    with pytest.raises(RequestError, match="Sampler"):
        engine.replace_background(context, image, truth, options(sampler="No such sampler"))


def test_full_job_with_tiny_detector_and_grabcut(context):
    image, truth = scene()
    request = engine.BackgroundJob(image=image, subject_prompt="the square", detector=registry.TINY_DETECTOR,
                                   segmenter=registry.BOX, box_threshold=0.0, text_threshold=0.0, keep=[0],
                                   keep_largest=True, options=options(save=False))
    outcome = engine.run_background_job(context, request)
    assert len(outcome.detections) == 10 and outcome.result is not None
    box_mask = masks.apply_mask_tools(masks.boxes_to_mask([outcome.detections[0].box], image.size), largest=True)
    assert np.array_equal(outcome.result.mask, box_mask)
    assert "Subject prompt: the square" in outcome.result.infotext and "Detector: tiny-grounding-dino" in \
        outcome.result.infotext


def test_no_detection_gives_a_message_with_thresholds_to_try(context):
    image, _ = scene()
    request = engine.BackgroundJob(image=image, subject_prompt="a dog", box_threshold=1.01, text_threshold=0.25,
                                   options=options(save=False))
    outcome = engine.run_background_job(context, request)
    assert outcome.result is None and outcome.detections == []
    assert "Nothing matching 'a dog'" in outcome.message and "lower thresholds" in outcome.message


def test_rgba_alpha_serves_as_the_mask_when_nothing_is_detected(context):
    image, truth = scene()
    rgba = image.convert("RGBA")
    alpha = Image.fromarray(truth.astype(np.uint8) * 255)
    rgba.putalpha(alpha)
    request = engine.BackgroundJob(image=rgba, subject_prompt="", options=options(save=False))
    outcome = engine.run_background_job(context, request)
    assert outcome.result is not None and np.array_equal(outcome.result.mask, truth)
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(outcome.result.image)[core], np.asarray(image)[core])


def test_dedicated_inpainting_model_folder_is_used_as_is(make_context, tmp_path):
    """A 9-channel inpainting UNet (SD1 inpainting layout) in models/Stable-diffusion works through the same path."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from webui.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny")
    config = dict(pipe.unet.config)
    config["in_channels"] = 9
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(config)
    inpaint = StableDiffusionInpaintPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                             unet=unet, scheduler=pipe.scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    models_dir = tmp_path / "models"
    inpaint.save_pretrained(models_dir / "Stable-diffusion" / "tiny-inpainting")
    context = make_context(models_dir=models_dir)
    image, truth = scene()
    result = engine.replace_background(context, image, truth, options(model="tiny-inpainting", save=False))
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(result.image)[core], np.asarray(image)[core])
    with context.pipelines.use("tiny-inpainting") as model:
        used = task_pipeline(model, "inpaint")
        assert isinstance(used, StableDiffusionInpaintPipeline) and used.unet.config.in_channels == 9
        assert used.unet is model.pipeline.unet   # the loaded components, not a copy
    from webui.api import GenerationRequest

    with pytest.raises(RequestError, match="inpainting model"):
        context.generate(GenerationRequest(prompt="x", model="tiny-inpainting", steps=1, width=64, height=64,
                                           save=False))


@pytest.mark.slow
def test_every_builtin_detector_and_segmenter_runs_through_the_registry(context):
    image, truth = scene()
    choices = {c.name: c for c in registry.detector_choices(context.models_dir)}
    assert "IDEA-Research/grounding-dino-tiny" in choices and choices[registry.TINY_DETECTOR].builtin
    assert "random weights" in choices[registry.TINY_DETECTOR].label
    detectors = [registry.TINY_DETECTOR]
    from extensions.background.detect import groundingdino_py_available

    if groundingdino_py_available() is None:
        detectors.append(registry.TINY_DETECTOR_PY)
    for name in detectors:
        found = engine.detect_subject(context, image, "the square", name, 0.0, 0.0, work_side=64)
        assert found and all(0 <= d.box[0] <= d.box[2] <= 128 and 0 <= d.box[1] <= d.box[3] <= 96 for d in found)
    segmenters = [c.name for c in registry.segmenter_choices(context.models_dir) if c.builtin]
    assert set(segmenters) == {registry.GRABCUT, registry.BOX, registry.TINY_SAM, registry.TINY_SAM2, registry.DEMO_SHAPES}
    for name in segmenters:
        mask = engine.segment_subject(context, image, [(34, 18, 102, 78)], name, work_side=96)
        assert mask.shape == truth.shape
        if name == registry.GRABCUT:
            assert (mask & truth).sum() / (mask | truth).sum() > 0.8
    with pytest.raises(RequestError):
        engine.segment_subject(context, image, [], registry.GRABCUT)
    with pytest.raises(ValueError, match="Unknown detector"):
        engine.detect_subject(context, image, "x", "no/such-detector")


def test_local_model_folders_are_listed(tmp_path):
    from extensions.background import detect, segment

    models_dir = tmp_path / "models"
    tiny = detect.build_tiny_grounding_dino()
    tiny.model.save_pretrained(models_dir / "GroundingDino" / "my-gd")
    tiny.processor.save_pretrained(models_dir / "GroundingDino" / "my-gd")
    (models_dir / "GroundingDino" / "groundingdino_swint_ogc.pth").write_bytes(b"")
    (models_dir / "GroundingDino" / "GroundingDINO_SwinT_OGC.py").write_text("backbone = 'swin_T_224_1k'\n")
    sam = segment.build_tiny_sam()
    sam.model.save_pretrained(models_dir / "SAM" / "my-sam")
    sam.processor.save_pretrained(models_dir / "SAM" / "my-sam")
    detectors = {c.name: c for c in registry.detector_choices(models_dir)}
    assert detectors["GroundingDino/my-gd"].backend == "transformers"
    assert detectors["GroundingDino/groundingdino_swint_ogc.pth"].backend == "groundingdino-py"
    assert detectors["GroundingDino/groundingdino_swint_ogc.pth"].config.endswith("GroundingDINO_SwinT_OGC.py")
    segmenters = {c.name: c for c in registry.segmenter_choices(models_dir)}
    assert segmenters["SAM/my-sam"].location.endswith("my-sam")
    cache = registry.ModelCache()
    loaded = cache.segmenter(models_dir, "SAM/my-sam")
    assert loaded.kind == "sam" and cache.segmenter(models_dir, "SAM/my-sam") is loaded
    assert cache.detector(models_dir, "GroundingDino/my-gd").kind == "transformers"


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_detector_and_segmenter_go_back_to_the_cpu(make_context):
    context = make_context(device="cuda")
    image, truth = scene()
    found = engine.detect_subject(context, image, "the square", registry.TINY_DETECTOR, 0.0, 0.0)
    assert found
    assert engine.model_cache(context).detector(context.models_dir, registry.TINY_DETECTOR).device.type == "cpu"
    mask = engine.segment_subject(context, image, [found[0].box], registry.TINY_SAM)
    assert mask.shape == truth.shape
    assert engine.model_cache(context).segmenter(context.models_dir, registry.TINY_SAM).device.type == "cpu"
    result = engine.replace_background(context, image, truth, options(save=False))
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(result.image)[core], np.asarray(image)[core])


class DeviceVisits:
    """Stands in for a detector's or segmenter's ``to``: records each move and where the model was when
    its step ran, without moving anything (so a CPU-only machine can watch a GPU round trip)."""

    def __init__(self):
        self.moves: list[str] = []
        self.where = "cpu"
        self.step_ran_on: list[str] = []

    def install(self, monkeypatch, holder, step_name, fail=False):
        """Watch ``holder.to`` and ``holder.<step_name>``; with ``fail`` the step raises after being recorded."""

        def to(device):
            self.moves.append(str(device))
            self.where = str(device)
            return holder

        step = getattr(holder, step_name)

        def watched_step(*args, **kwargs):
            self.step_ran_on.append(self.where)
            if fail:
                raise RuntimeError("CUDA out of memory (pretend)")
            return step(*args, **kwargs)

        monkeypatch.setattr(holder, "to", to)
        monkeypatch.setattr(holder, step_name, watched_step)


@pytest.mark.parametrize("fails", [False, True], ids=["step-succeeds", "step-raises"])
def test_detector_and_segmenter_run_on_the_device_and_go_back_to_the_cpu(context, monkeypatch, fails):
    """Each model is moved to the pipeline manager's device for its step only, and back to the CPU
    afterwards, even when the step raises (the device here is a CUDA one the test only pretends to have)."""
    import torch

    monkeypatch.setattr(engine, "_device", lambda context: torch.device("cuda", 1))
    image, _truth = scene()
    detector = engine.model_cache(context).detector(context.models_dir, registry.TINY_DETECTOR)
    segmenter = engine.model_cache(context).segmenter(context.models_dir, registry.TINY_SAM)
    detector_visits, segmenter_visits = DeviceVisits(), DeviceVisits()
    detector_visits.install(monkeypatch, detector, "detect", fail=fails)
    segmenter_visits.install(monkeypatch, segmenter, "segment", fail=fails)
    for call, visits in ((lambda: engine.detect_subject(context, image, "the square", registry.TINY_DETECTOR,
                                                        0.0, 0.0, work_side=64), detector_visits),
                         (lambda: engine.segment_subject(context, image, [(34, 18, 102, 78)], registry.TINY_SAM,
                                                         work_side=96), segmenter_visits)):
        if fails:
            with pytest.raises(RuntimeError, match="pretend"):
                call()
        else:
            assert len(call())
        assert visits.step_ran_on == ["cuda:1"]
        assert visits.moves == ["cuda:1", "cpu"]


def test_weighted_and_long_background_prompts_work(context):
    image, truth = scene()
    long_prompt = "(a sunny beach:1.3), [clouds], " + ", ".join(["palm tree"] * 40)
    result = engine.replace_background(context, image, truth, options(background_prompt=long_prompt, save=False))
    plain = engine.replace_background(context, image, truth, options(background_prompt="a sunny beach", save=False))
    assert not np.array_equal(np.asarray(result.image), np.asarray(plain.image))
    assert result.infotext.startswith("(a sunny beach:1.3)")


def test_progress_is_reported_and_interrupt_stops_before_painting(context):
    from webui.api import Job

    image, truth = scene()
    job = Job()
    engine.replace_background(context, image, truth, options(save=False), job)
    snapshot = job.snapshot()
    assert snapshot["steps"] == 3 and snapshot["step"] == 3
    stopped = Job()
    stopped.interrupt()
    with pytest.raises(RequestError, match="Interrupted"):
        engine.replace_background(context, image, truth, options(save=False), stopped)


def test_a_hub_model_that_is_not_cached_offline_gives_a_clear_message(context):
    image, _ = scene()
    with pytest.raises(registry.ModelUnavailableError, match="not in the local cache"):
        engine.detect_subject(context, image, "a dog", "IDEA-Research/grounding-dino-tiny")
    with pytest.raises(registry.ModelUnavailableError, match="GrabCut"):
        engine.segment_subject(context, image, [(1, 1, 20, 20)], "facebook/sam-vit-base")


def test_per_job_extension_hooks_apply_to_background_jobs(make_context):
    """VAE auto tiling (per job), the memory profile in the infotext and pipeline_call_kwargs reach the inpainting."""
    from webui.api import hookimpl

    seen = {"requests": [], "tiling": [], "steps": [], "after": []}

    def record_step(pipe, step, timestep, callback_kwargs):
        seen["steps"].append(step)
        return {}

    class Recorder:
        """Records what the per-job hooks see during a background job."""

        @hookimpl
        def before_generation(self, request, model):
            seen["requests"].append(request)

        @hookimpl
        def pipeline_call_kwargs(self, request, model):
            seen["tiling"].append(bool(model.pipeline.vae.use_tiling))
            return {"callback_on_step_end": record_step}

        @hookimpl
        def after_generation(self, request, model, result):
            seen["after"].append([record.path for record in result.images])

    context = make_context(setting_overrides={"presets.profile": "medvram", "vae.tiling_threshold": 64},
                           extra_plugins={"recorder": Recorder()})
    image, truth = scene()
    result = engine.replace_background(context, image, truth, options(strength=0.9))
    request = seen["requests"][0]
    assert (request.width, request.height) == (128, 96) and request.prompt == "a sunny beach"
    assert request.extras["background.task"] == "inpaint" and request.extras["background.strength"] == 0.9
    assert request.extras["background.input_size"] == (128, 96)
    assert seen["tiling"] == [True]  # 128 px > the 64 px threshold: tiled during the job
    assert len(seen["steps"]) == 2  # the extension's callback ran inside the inpainting call (3 steps x 0.9)
    # The repaint is an inpaint job that does not save (the composite is what is saved).
    assert seen["after"] == [[None]] and Path(result.path).is_file()
    info = read_infotext(Image.open(result.path))
    assert "Memory profile: medvram (no offload on cpu)" in info and "VAE tiling: on" in info
    assert "Denoising strength: 0.9" in info
    # At or below the threshold the same model decodes without tiles.
    small = image.resize((64, 48), Image.Resampling.NEAREST)
    small_truth = np.zeros((48, 64), bool)
    small_truth[12:36, 20:48] = True
    result = engine.replace_background(context, small, small_truth, options(save=False, work_side=64))
    assert seen["tiling"] == [True, False] and "VAE tiling" not in result.infotext
    assert "Memory profile: medvram" in result.infotext


def test_lora_prompt_tags_are_taken_out_for_background_jobs(context):
    """An extension that edits request.prompt (LoRA tags) changes what the inpainting encodes; a missing LoRA is refused."""
    from webui.api import ExtensionError

    image, truth = scene()
    with pytest.raises(ExtensionError, match="LoRA not found"):
        engine.replace_background(context, image, truth, options(background_prompt="a beach <lora:nothere:0.5>"))
    plain = engine.replace_background(context, image, truth, options(save=False))
    assert "Lora hashes" not in plain.infotext
    from tests.test_lora import write_random_lora

    write_random_lora(context.models_dir / "Lora" / "beachy.safetensors", seed=3)
    styled = engine.replace_background(context, image, truth, options(background_prompt="a sunny beach <lora:beachy:1>",
                                                                      save=False))
    assert "Lora hashes: \"beachy: " in styled.infotext
    assert np.abs(np.asarray(styled.generated, int) - np.asarray(plain.generated, int)).max() > 0
    again = engine.replace_background(context, image, truth, options(save=False))  # the adapter is gone again
    assert np.array_equal(np.asarray(again.generated), np.asarray(plain.generated))


def tiny_inpainting_pipeline(name="tiny"):
    """A tiny dedicated inpainting pipeline: the built-in model with a 9-channel UNet (random weights, seeded)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    from webui.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(name)
    config = dict(pipe.unet.config)
    config["in_channels"] = 9
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(config)
    cls = StableDiffusionXLInpaintPipeline if name == "tiny-sdxl" else StableDiffusionInpaintPipeline
    return cls.from_pipe(pipe, unet=unet)


@pytest.mark.parametrize("name,family", [("tiny", "sd1"), pytest.param("tiny-sdxl", "sdxl", marks=pytest.mark.slow)])
def test_single_file_inpainting_checkpoint_loads_for_the_background_tab(make_context, tmp_path, name, family):
    """A 9-channel .safetensors (original layout, sidecar configs) loads with the family's inpainting pipeline."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    from webui.api import GenerationRequest
    from webui.pipelines.export import export_single_file
    from webui.pipelines.families import detect_file_family, is_inpainting_checkpoint

    pipe = tiny_inpainting_pipeline(name)
    folder = tmp_path / "models" / "Stable-diffusion"
    path = export_single_file(pipe, folder / "my-inpainting.safetensors")
    pipe.save_pretrained(folder / "my-inpainting.config")  # offline configs beside the file
    pipe.save_pretrained(folder / "my-inpainting-folder")  # the same weights as a diffusers folder
    assert detect_file_family(path) == family and is_inpainting_checkpoint(path)
    context = make_context(models_dir=tmp_path / "models")
    names = [source.name for source in context.list_models()]
    assert "my-inpainting.safetensors" in names and "my-inpainting.config" not in names
    assert context.family_of("my-inpainting.safetensors") == family
    image, truth = scene()
    sampler = "Euler a"
    from_file = engine.replace_background(context, image, truth, options(model="my-inpainting.safetensors",
                                                                          sampler=sampler))
    core = masks.grow(truth, -3)
    assert np.array_equal(np.asarray(from_file.image)[core], np.asarray(image)[core])
    assert "Model: my-inpainting," in read_infotext(Image.open(from_file.path))
    with context.pipelines.use("my-inpainting.safetensors") as model:
        cls = StableDiffusionXLInpaintPipeline if family == "sdxl" else StableDiffusionInpaintPipeline
        assert model.family == family and isinstance(model.pipeline, cls)
        assert model.pipeline.unet.config.in_channels == 9
        assert task_pipeline(model, "inpaint") is model.pipeline
    from_folder = engine.replace_background(context, image, truth, options(model="my-inpainting-folder",
                                                                            sampler=sampler, save=False))
    difference = np.abs(np.asarray(from_file.generated).astype(int) - np.asarray(from_folder.generated).astype(int))
    assert difference.max() <= 2  # same weights, original layout vs diffusers folder
    with pytest.raises(RequestError, match="inpainting model"):  # txt2img still refuses it clearly
        context.generate(GenerationRequest(prompt="x", model="my-inpainting.safetensors", steps=1, width=64,
                                           height=64, save=False))


def test_a_regular_single_file_is_not_taken_for_an_inpainting_one(context, tmp_path):
    from webui.pipelines.export import export_single_file
    from webui.pipelines.families import is_inpainting_checkpoint
    from webui.pipelines.tiny import build_tiny_pipeline

    path = export_single_file(build_tiny_pipeline("tiny"), tmp_path / "plain.safetensors")
    assert not is_inpainting_checkpoint(path) and not is_inpainting_checkpoint(tmp_path / "missing.ckpt")
