"""txt2img through the pipeline manager: exactness, every family, single files, refiner, jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.api import GenerationRequest, Job, RefinerOptions, RequestError, parse_infotext, read_infotext
from webui.pipelines.tiny import build_tiny_pipeline

SMALL = dict(width=64, height=64, steps=3, cfg_scale=5.0, save=False)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def direct_image(name: str, sampler: str, prompt: str, seed: int, negative: str | None = None, **kwargs):
    """The same image made on a freshly built pipeline with plain diffusers calls."""
    from webui.pipelines.schedulers import make_scheduler
    from webui.pipelines.tiny import TINY_MODELS

    pipe = build_tiny_pipeline(name)
    pipe.scheduler = make_scheduler(pipe.scheduler.config, sampler, "Automatic", TINY_MODELS[name])
    return pipe(
        prompt=prompt, negative_prompt=negative, num_inference_steps=SMALL["steps"],
        guidance_scale=SMALL["cfg_scale"], width=64, height=64,
        generator=torch.Generator("cpu").manual_seed(seed), **kwargs,
    ).images[0]


@pytest.mark.parametrize(
    "model, sampler, scheduler_name",
    [
        ("tiny", "Euler a", "EulerAncestralDiscreteScheduler"),
        ("tiny", "DPM++ 2M", "DPMSolverMultistepScheduler"),
        ("tiny-sdxl", "Euler", "EulerDiscreteScheduler"),
        ("tiny-sd3", "Flow Euler", "FlowMatchEulerDiscreteScheduler"),
    ],
)
def test_manager_output_is_bit_identical_to_bare_diffusers(context, model, sampler, scheduler_name):
    request = GenerationRequest(prompt="a red circle on blue", negative_prompt="", model=model, seed=1234,
                                sampler=sampler, **SMALL)
    ours = context.generate(request).images[0].image
    theirs = direct_image(model, sampler, "a red circle on blue", 1234)
    with context.pipelines.use(model) as loaded:
        assert type(loaded.pipeline.scheduler).__name__ == scheduler_name
    assert ours.size == (64, 64)
    assert np.array_equal(pixels(ours), pixels(theirs))


@pytest.mark.parametrize("model, sampler", [("tiny", "Euler a"), ("tiny-sd2", "DDIM"), ("tiny-sdxl", "Euler a"),
                                            ("tiny-sd3", "Flow Euler")])
def test_every_family_generates(context, model, sampler):
    request = GenerationRequest(prompt="a cat", model=model, sampler=sampler, seed=7, batch_size=2, **SMALL)
    result = context.generate(request)
    assert [record.seed for record in result.images] == [7, 8]
    assert all(record.image.size == (64, 64) for record in result.images)
    assert not np.array_equal(pixels(result.images[0].image), pixels(result.images[1].image))


def test_seed_minus_one_draws_a_seed_that_reproduces(context):
    first = context.generate(GenerationRequest(prompt="x", model="tiny", seed=-1, **SMALL)).images[0]
    again = context.generate(GenerationRequest(prompt="x", model="tiny", seed=first.seed, **SMALL)).images[0]
    assert 0 <= first.seed < 2**32
    assert np.array_equal(pixels(first.image), pixels(again.image))


def test_batch_count_continues_the_seed_sequence(context):
    result = context.generate(GenerationRequest(prompt="x", model="tiny", seed=100, batch_count=3, **SMALL))
    assert result.seeds == [100, 101, 102]
    single = context.generate(GenerationRequest(prompt="x", model="tiny", seed=102, **SMALL)).images[0]
    assert np.array_equal(pixels(result.images[2].image), pixels(single.image))


def test_image_in_a_batch_matches_the_same_seed_alone(context):
    """Batched matmuls round differently on the CPU, so equal up to a level or two, not bit-exact."""
    result = context.generate(GenerationRequest(prompt="x", model="tiny", seed=100, batch_size=2, **SMALL))
    assert result.seeds == [100, 101]
    single = context.generate(GenerationRequest(prompt="x", model="tiny", seed=101, **SMALL)).images[0]
    difference = np.abs(pixels(result.images[1].image).astype(int) - pixels(single.image).astype(int))
    assert difference.max() <= 3


def test_single_file_checkpoint_loads_through_from_single_file(context, tmp_path):
    from webui.pipelines.export import export_single_file
    from webui.pipelines.tiny import save_tiny_pipeline

    folder = context.models_dir / "Stable-diffusion"
    export_single_file(build_tiny_pipeline("tiny"), folder / "mini.safetensors")
    save_tiny_pipeline("tiny", folder / "mini.config")  # offline configs beside the file
    names = [source.name for source in context.list_models()]
    assert "mini.safetensors" in names and "mini.config" not in names
    request = dict(prompt="a house", seed=5, sampler="Euler a", **SMALL)
    from_file = context.generate(GenerationRequest(model="mini.safetensors", **request))
    builtin = context.generate(GenerationRequest(model="tiny", **request))
    assert np.array_equal(pixels(from_file.images[0].image), pixels(builtin.images[0].image))
    assert "Model: mini," in from_file.images[0].infotext


def test_local_diffusers_folder_loads(context):
    from webui.pipelines.tiny import save_tiny_pipeline

    save_tiny_pipeline("tiny-sdxl", context.models_dir / "Stable-diffusion" / "my-xl")
    result = context.generate(GenerationRequest(prompt="a boat", model="my-xl", sampler="Euler", seed=3, **SMALL))
    assert result.images[0].image.size == (64, 64)
    with context.pipelines.use("my-xl") as model:
        assert model.family == "sdxl"


class StepLog(Job):
    """A job that records the step numbers it is told about."""

    def __init__(self):
        super().__init__()
        self.numbers = []

    def step(self, step_index, preview=None):
        self.numbers.append(step_index)
        return super().step(step_index, preview)


def record_denoiser_timesteps(context, name, into):
    """Append the timestep of every UNet call of the loaded model ``name`` to ``into``; returns the hook."""
    def remember(module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        into.append(float(torch.as_tensor(timestep).flatten()[0]))

    with context.pipelines.use(name) as model:
        return model.pipeline.unet.register_forward_pre_hook(remember, with_kwargs=True)


@pytest.mark.parametrize("switch_at, base_steps", [(0.6, 3), (0.2, 1)])
def test_sdxl_refiner_takes_over_at_the_switch_point(context, switch_at, base_steps):
    """The base model runs the first round(steps * switch_at) steps of the plain schedule and the
    refiner the rest (one UNet call a step with CFG batched); progress counts 1..steps across both."""
    base = dict(prompt="a lighthouse", model="tiny-sdxl", sampler="Euler", seed=11, **{**SMALL, "steps": 5})
    plain_timesteps, base_timesteps, refiner_timesteps = [], [], []
    hook = record_denoiser_timesteps(context, "tiny-sdxl", plain_timesteps)
    plain = context.generate(GenerationRequest(**base)).images[0]
    hook.remove()
    assert len(plain_timesteps) == 5
    hooks = [record_denoiser_timesteps(context, "tiny-sdxl", base_timesteps),
             record_denoiser_timesteps(context, "tiny-sdxl-refiner", refiner_timesteps)]
    job = StepLog()
    try:
        refined = context.generate(GenerationRequest(
            refiner=RefinerOptions(model="tiny-sdxl-refiner", switch_at=switch_at), **base), job).images[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert base_timesteps == plain_timesteps[:base_steps]
    assert refiner_timesteps == plain_timesteps[base_steps:]
    assert job.numbers == [1, 2, 3, 4, 5]
    assert refined.image.size == (64, 64)
    assert not np.array_equal(pixels(plain.image), pixels(refined.image))
    assert "Refiner: tiny-sdxl-refiner" in refined.infotext and f"Refiner switch at: {switch_at}" in refined.infotext


def test_the_refiner_switch_point_decides_the_image(context):
    """Two switch points give two images."""
    base = dict(prompt="a lighthouse", model="tiny-sdxl", sampler="Euler", seed=11, **{**SMALL, "steps": 5})

    def refined(switch_at):
        request = GenerationRequest(refiner=RefinerOptions(model="tiny-sdxl-refiner", switch_at=switch_at), **base)
        return pixels(context.generate(request).images[0].image)

    assert not np.array_equal(refined(0.2), refined(0.6))


class StopAt(Job):
    """A job that presses Interrupt or Skip when a given step is reported."""

    def __init__(self, action: str, at_step: int, image_index: int = 0):
        super().__init__()
        self.action, self.at_step, self.target_image = action, at_step, image_index
        self.pressed = False

    def step(self, step_index, preview=None):
        super().step(step_index, preview)
        if not self.pressed and step_index == self.at_step and self.image_index == self.target_image:
            self.pressed = True
            getattr(self, self.action)()


def test_interrupt_stops_the_job_and_keeps_the_current_image(context):
    job = StopAt("interrupt", at_step=1)
    result = context.generate(GenerationRequest(prompt="x", model="tiny", seed=1, batch_count=3, **SMALL), job)
    assert result.interrupted
    assert len(result.images) == 1


def test_skip_moves_on_to_the_next_image(context):
    job = StopAt("skip", at_step=1, image_index=0)
    result = context.generate(GenerationRequest(prompt="x", model="tiny", seed=1, batch_count=2, **SMALL), job)
    assert not result.interrupted
    assert result.skipped == 1
    assert len(result.images) == 2


def test_progress_reports_every_step_with_previews(context):
    seen = []

    class Recorder(Job):
        def step(self, step_index, preview=None):
            super().step(step_index, preview)
            seen.append((step_index, preview is not None))

    context.generate(GenerationRequest(prompt="x", model="tiny", seed=1, **dict(SMALL, steps=4)), Recorder())
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    assert any(has_preview for _, has_preview in seen)


def test_saved_png_carries_a1111_infotext(context):
    request = GenerationRequest(prompt="a (red:1.2) fox, detailed", negative_prompt="blurry", model="tiny",
                                seed=42, sampler="DPM++ 2M", schedule_type="Karras", **dict(SMALL, save=True))
    record = context.generate(request).images[0]
    assert record.path and record.path.endswith("-42.png")
    assert "txt2img" in record.path
    prompt, negative, params = parse_infotext(read_infotext(record.path))
    assert prompt == "a (red:1.2) fox, detailed" and negative == "blurry"
    assert params["Steps"] == "3" and params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert params["CFG scale"] == "5.0" and params["Seed"] == "42" and params["Size"] == "64x64"
    assert params["Model"] == "tiny" and len(params["Model hash"]) == 10
    assert params["Version"].startswith("Easel ")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(width=0), r"width must be between 64 and \d+ pixels, got 0"),
        (dict(width=100000), r"width must be between 64 and \d+ pixels, got 100000"),
        (dict(height=100), r"height must be a multiple of 8, got 100 \(try 96\)"),
        (dict(steps=0), "steps must be between 1 and 500, got 0"),
        (dict(model="no-such-model"), "Unknown model"),
        (dict(model="../../etc/passwd"), "Unknown model"),
        (dict(sampler="Warp Drive"), "Sampler 'Warp Drive'"),
        (dict(schedule_type="Sideways"), "Schedule type 'Sideways' does not work"),
        (dict(sampler="Euler a", schedule_type="Karras"), "choose one of: Automatic"),
        (dict(batch_size=0), "batch size must be between 1 and 8, got 0"),
    ],
)
def test_bad_requests_get_clear_messages(context, change, message):
    from webui.errors import EaselError

    request = GenerationRequest(**{**dict(prompt="x", model="tiny", seed=1, **SMALL), **change})
    with pytest.raises(EaselError, match=message):
        context.generate(request)
    ok = context.generate(GenerationRequest(prompt="x", model="tiny", seed=1, **SMALL))
    assert len(ok.images) == 1


def test_hub_model_without_network_says_what_to_do(context):
    from webui.pipelines.loaders import ModelLoadError

    for name in ("stabilityai/stable-diffusion-xl-base-1.0", "someone/some-model"):
        with pytest.raises(ModelLoadError, match="from the hub"):
            context.generate(GenerationRequest(prompt="x", model=name, sampler="Euler", **SMALL))
    assert context.pipelines.loaded_names() == []
    assert len(context.generate(GenerationRequest(prompt="x", model="tiny", **SMALL)).images) == 1


def test_corrupt_checkpoint_file_is_reported(context):
    from webui.errors import EaselError

    (context.models_dir / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(EaselError, match="broken.safetensors"):
        context.generate(GenerationRequest(prompt="x", model="broken.safetensors", **SMALL))


def test_pickle_checkpoints_are_not_listed_without_opt_in(make_context, tmp_path):
    context = make_context()
    (context.models_dir / "Stable-diffusion" / "old.ckpt").write_bytes(b"not really")
    assert "old.ckpt" not in [source.name for source in context.list_models()]
    with pytest.raises(Exception, match="--allow-pickle"):
        context.generate(GenerationRequest(prompt="x", model="old.ckpt", **SMALL))
    opted_in = make_context(allow_pickle=True)
    assert "old.ckpt" in [source.name for source in opted_in.list_models()]


def test_sampler_of_the_wrong_family_is_refused(context):
    with pytest.raises(RequestError, match="does not work with sd3"):
        context.generate(GenerationRequest(prompt="x", model="tiny-sd3", sampler="Euler a", **SMALL))


def test_one_job_at_a_time_per_device(make_context):
    """Two jobs started together never run on the device at the same time; both finish."""
    import threading

    from webui.api import hookimpl

    state = {"running": 0, "overlaps": 0}
    guard = threading.Lock()

    class Watch:
        """Counts jobs inside the device lock."""

        @hookimpl
        def before_generation(self, request, model):
            with guard:
                state["running"] += 1
                state["overlaps"] += state["running"] > 1

        @hookimpl
        def after_generation(self, request, model, result):
            with guard:
                state["running"] -= 1

    context = make_context(extra_plugins={"watch": Watch()})
    results = []
    threads = [threading.Thread(target=lambda s=seed: results.append(
        context.generate(GenerationRequest(prompt="x", model="tiny", seed=s, **SMALL)))) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 3 and state["overlaps"] == 0


def test_switching_models_evicts_the_least_recently_used(make_context):
    context = make_context(max_loaded=1)
    context.generate(GenerationRequest(prompt="x", model="tiny", seed=1, **SMALL))
    context.generate(GenerationRequest(prompt="x", model="tiny-sdxl", sampler="Euler", seed=1, **SMALL))
    assert context.pipelines.loaded_names() == ["tiny-sdxl"]
