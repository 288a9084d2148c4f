"""Tests for webui.pipelines.schedulers (A1111 sampler names -> diffusers schedulers)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers.configuration_utils import FrozenDict  # noqa: E402

from webui.pipelines import schedulers as sch_mod  # noqa: E402
from webui.pipelines.schedulers import (  # noqa: E402
    SAMPLERS,
    SCHEDULE_TYPES,
    SamplerUnavailableError,
    UnknownSamplerError,
    UnsupportedScheduleTypeError,
    is_sampler_available,
    make_scheduler,
    resolve_sampler,
    samplers_for,
    schedule_types_for,
)

# Scheduler configs as published with the models (scheduler/scheduler_config.json).
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD21_CONFIG = {  # v-prediction
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SD3_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.29.0.dev0",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}

NON_FLOW = [s for s in SAMPLERS if not s.startswith("Flow ")]
FLOW = [s for s in SAMPLERS if s.startswith("Flow ")]


def _requires(sampler):
    if not is_sampler_available(sampler):
        pytest.skip(f"{sampler} needs an optional package (torchsde) that is not installed")


def _denoise(scheduler, model, latents, steps=None):
    """Run the usual diffusers loop; ``model(x_in, t)`` gives the model output."""
    timesteps = scheduler.timesteps if steps is None else scheduler.timesteps[:steps]
    generator = torch.Generator().manual_seed(0)
    for t in timesteps:
        x_in = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        kwargs = {"generator": generator} if "generator" in _step_params(scheduler) else {}
        latents = scheduler.step(model(x_in, t), t, latents, **kwargs).prev_sample
    return latents


def _step_params(scheduler):
    import inspect

    return inspect.signature(scheduler.step).parameters


def _initial(scheduler, shape=(1, 4, 8, 8), seed=0):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return noise * getattr(scheduler, "init_noise_sigma", 1.0)


# --- lists -------------------------------------------------------------------------------


def test_lists_cover_the_brief():
    for name in ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DPM++ SDE Karras", "DDIM",
                 "UniPC", "Heun", "LMS", "PNDM", "DPM2", "DPM2 a", "DEIS", "Flow Euler"]:
        assert name in SAMPLERS
    assert SCHEDULE_TYPES[0] == "Automatic"
    assert {"Karras", "Exponential", "SGM Uniform", "Beta"} <= set(SCHEDULE_TYPES)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_samplers_for_noise_prediction_families(family):
    names = samplers_for(family)
    assert names[:2] == ["Euler", "Euler a"]
    assert not [n for n in names if n.startswith("Flow")]
    assert set(names) == {n for n in NON_FLOW if is_sampler_available(n)}


def test_samplers_for_sd3_is_flow_only():
    assert samplers_for("sd3") == FLOW
    assert FLOW[0] == "Flow Euler"


def test_samplers_for_unknown_family():
    with pytest.raises(ValueError, match="family"):
        samplers_for("sd4")


def test_dpmpp_sde_follows_torchsde(monkeypatch):
    monkeypatch.setattr(sch_mod, "_package_available", lambda name: False)
    assert "DPM++ SDE" not in samplers_for("sd1")
    assert "DPM++ SDE Karras" not in samplers_for("sd1")
    with pytest.raises(SamplerUnavailableError, match="pip install torchsde") as info:
        make_scheduler(SD15_CONFIG, "DPM++ SDE")
    assert isinstance(info.value, UnknownSamplerError)
    monkeypatch.setattr(sch_mod, "_package_available", lambda name: True)
    assert "DPM++ SDE" in samplers_for("sd1")


# --- every sampler works ----------------------------------------------------------------


@pytest.mark.parametrize("sampler", NON_FLOW)
@pytest.mark.parametrize("config", [SD15_CONFIG, SDXL_CONFIG], ids=["sd15", "sdxl"])
def test_every_sd_sampler_runs(sampler, config):
    _requires(sampler)
    scheduler = make_scheduler(config, sampler, family="sd1")
    scheduler.set_timesteps(4)
    latents = _initial(scheduler)
    out = _denoise(scheduler, lambda x, t: 0.1 * x, latents, steps=3)
    assert out.shape == latents.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", FLOW)
def test_every_sd3_sampler_runs(sampler):
    scheduler = make_scheduler(SD3_CONFIG, sampler, family="sd3")
    scheduler.set_timesteps(4)
    latents = _initial(scheduler, shape=(1, 16, 8, 8))
    out = _denoise(scheduler, lambda x, t: 0.1 * x, latents, steps=3)
    assert torch.isfinite(out).all()


def _all_combinations(names, family):
    return [(s, st) for s in names if is_sampler_available(s) for st in schedule_types_for(s, family)]


@pytest.mark.parametrize("sampler,schedule", _all_combinations(NON_FLOW, "sd1"))
def test_every_schedule_type_runs(sampler, schedule):
    scheduler = make_scheduler(SD15_CONFIG, sampler, schedule)
    scheduler.set_timesteps(6)
    out = _denoise(scheduler, lambda x, t: 0.1 * x, _initial(scheduler))
    assert torch.isfinite(out).all()


# --- correctness: a perfect model must land on the data ----------------------------------
#
# For data that is a single point x0, the ideal noise/velocity prediction is known in closed
# form; every correct deterministic or ancestral sampler then ends at x0.  x0 reaches beyond
# [-1, 1] so that clip_sample=True (the DDIM trap) would be caught.

X0 = torch.linspace(-2.0, 2.0, 256).reshape(1, 4, 8, 8)


def _vp_oracle(scheduler, prediction_type):
    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()
    log_sigmas = np.log(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)

    def model(x_in, t):
        # Continuous t as the k-diffusion schedulers use it: log-sigma interpolation.
        sigma = math.exp(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas))
        alpha_bar = 1.0 / (1.0 + sigma**2)
        a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        eps = (x_in.double() - a * X0.double()) / s
        out = eps if prediction_type == "epsilon" else a * eps - s * X0.double()
        return out.float()

    return model


def _flow_oracle(scheduler):
    def model(x, t):
        sigma = float(t) / scheduler.config.num_train_timesteps
        return ((x.double() - X0.double()) / sigma).float()

    return model


# DDIM, PNDM and DEIS stop at timestep 0 (alpha_bar 0.99915, sigma 0.029) instead of sigma 0,
# leaving a trace of the noise (0.029 * up to ~3.5) by design.
_TOLERANCE = {"DDIM": 0.12, "PNDM": 0.12, "DEIS": 0.12}


@pytest.mark.parametrize("sampler,schedule", _all_combinations(NON_FLOW, "sd1"))
@pytest.mark.parametrize("config", [SD15_CONFIG, SD21_CONFIG], ids=["eps", "v"])
def test_perfect_model_reaches_the_data(sampler, schedule, config):
    scheduler = make_scheduler(config, sampler, schedule, family="sd2" if config is SD21_CONFIG else "sd1")
    scheduler.set_timesteps(12)
    model = _vp_oracle(scheduler, config.get("prediction_type", "epsilon"))
    out = _denoise(scheduler, model, _initial(scheduler))
    error = (out - X0).abs().max().item()
    assert error < _TOLERANCE.get(sampler, 0.05), f"{sampler}/{schedule}: max error {error:.4f}"


@pytest.mark.parametrize("sampler,schedule", _all_combinations(FLOW, "sd3"))
def test_perfect_flow_model_reaches_the_data(sampler, schedule):
    scheduler = make_scheduler(SD3_CONFIG, sampler, schedule, family="sd3")
    scheduler.set_timesteps(8)
    out = _denoise(scheduler, _flow_oracle(scheduler), _initial(scheduler))
    error = (out - X0).abs().max().item()
    assert error < 0.02, f"{sampler}/{schedule}: max error {error:.4f}"


def test_ddim_with_clip_sample_would_fail_the_oracle():
    """The oracle test really detects the clip_sample trap."""
    from diffusers import DDIMScheduler

    no_clip_key = {k: v for k, v in SDXL_CONFIG.items() if k != "clip_sample"}
    scheduler = DDIMScheduler.from_config(no_clip_key)
    assert scheduler.config.clip_sample is True  # the trap: diffusers' default
    scheduler.set_timesteps(12)
    out = _denoise(scheduler, _vp_oracle(scheduler, "epsilon"), _initial(scheduler))
    assert (out - X0).abs().max().item() > 0.5


# --- configuration details ----------------------------------------------------------------


@pytest.mark.parametrize("sampler", NON_FLOW)
def test_v_prediction_and_betas_carry_over(sampler):
    _requires(sampler)
    scheduler = make_scheduler(SD21_CONFIG, sampler, family="sd2")
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_start == 0.00085 and scheduler.config.beta_end == 0.012


def test_frozendict_config_accepted():
    scheduler = make_scheduler(FrozenDict(SD21_CONFIG), "Euler a", family="sd2")
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert scheduler.config.prediction_type == "v_prediction"


def test_ddim_clip_sample_off():
    for config in (SD15_CONFIG, SDXL_CONFIG, {k: v for k, v in SD15_CONFIG.items() if k != "clip_sample"},
                   {"_class_name": "DDIMScheduler", "clip_sample": True, "set_alpha_to_one": True}):
        scheduler = make_scheduler(config, "DDIM")
        assert type(scheduler).__name__ == "DDIMScheduler"
        assert scheduler.config.clip_sample is False
        assert scheduler.config.set_alpha_to_one is False


def test_pndm_skips_prk_steps():
    scheduler = make_scheduler({"_class_name": "DDIMScheduler"}, "PNDM")
    assert scheduler.config.skip_prk_steps is True


@pytest.mark.parametrize(
    "sampler,cls,extra",
    [
        ("Euler", "EulerDiscreteScheduler", {}),
        ("Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        ("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        ("DPM++ SDE", "DPMSolverSDEScheduler", {}),
        ("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
        ("DDIM", "DDIMScheduler", {}),
        ("UniPC", "UniPCMultistepScheduler", {"use_flow_sigmas": False}),
        ("Heun", "HeunDiscreteScheduler", {}),
        ("LMS", "LMSDiscreteScheduler", {}),
        ("PNDM", "PNDMScheduler", {}),
        ("DPM2", "KDPM2DiscreteScheduler", {}),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
        ("DEIS", "DEISMultistepScheduler", {}),
    ],
)
def test_sampler_classes(sampler, cls, extra):
    _requires(sampler)
    scheduler = make_scheduler(SD15_CONFIG, sampler)
    assert type(scheduler).__name__ == cls
    for key, value in extra.items():
        assert scheduler.config[key] == value, key


@pytest.mark.parametrize(
    "sampler,cls,extra",
    [
        ("Flow Euler", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "stochastic_sampling": False}),
        ("Flow Heun", "FlowMatchHeunDiscreteScheduler", {"shift": 3.0}),
        ("Flow DPM++ 2M", "DPMSolverMultistepScheduler",
         {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0, "solver_order": 2}),
        ("Flow UniPC", "UniPCMultistepScheduler",
         {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}),
    ],
)
def test_flow_sampler_classes_keep_shift(sampler, cls, extra):
    scheduler = make_scheduler(SD3_CONFIG, sampler, family="sd3")
    assert type(scheduler).__name__ == cls
    for key, value in extra.items():
        assert scheduler.config[key] == value, key


FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@pytest.mark.parametrize(
    "schedule,flag,spacing",
    [
        ("Karras", "use_karras_sigmas", None),
        ("Exponential", "use_exponential_sigmas", None),
        ("Beta", "use_beta_sigmas", None),
        ("SGM Uniform", None, "trailing"),
        ("Uniform", None, "linspace"),
    ],
)
@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun", "LMS", "DPM2", "DPM2 a", "UniPC", "DEIS",
                                     "DPM++ SDE"])
def test_schedule_type_sets_the_flag(sampler, schedule, flag, spacing):
    _requires(sampler)
    scheduler = make_scheduler(SDXL_CONFIG, sampler, schedule, family="sdxl")
    for name in FLAGS:
        assert scheduler.config[name] is (name == flag), name
    if spacing:
        assert scheduler.config.timestep_spacing == spacing


@pytest.mark.parametrize("sampler,schedule", [("Euler a", "SGM Uniform"), ("Euler a", "Uniform"),
                                              ("DDIM", "SGM Uniform"), ("PNDM", "SGM Uniform")])
def test_spacing_only_samplers(sampler, schedule):
    scheduler = make_scheduler(SD15_CONFIG, sampler, schedule)
    expected = {"SGM Uniform": "trailing", "Uniform": "linspace"}[schedule]
    assert scheduler.config.timestep_spacing == expected


@pytest.mark.parametrize("schedule,flag", [("Karras", "use_karras_sigmas"), ("Exponential", "use_exponential_sigmas"),
                                           ("Beta", "use_beta_sigmas")])
def test_flow_euler_sigma_schedules(schedule, flag):
    scheduler = make_scheduler(SD3_CONFIG, "Flow Euler", schedule, family="sd3")
    for name in FLAGS:
        assert scheduler.config[name] is (name == flag)
    assert scheduler.config.shift == 3.0


@pytest.mark.parametrize("sampler,schedule", [("Euler a", "Karras"), ("DDIM", "Karras"), ("PNDM", "Beta"),
                                              ("DDIM", "Uniform"), ("Flow Heun", "Karras"), ("Flow DPM++ 2M", "Karras"),
                                              ("Euler", "Polyexponential"), ("Euler", "nonsense")])
def test_unsupported_schedule_types(sampler, schedule):
    family = "sd3" if sampler.startswith("Flow") else "sd1"
    with pytest.raises(UnsupportedScheduleTypeError, match="valid schedule types: Automatic"):
        make_scheduler(SD3_CONFIG if family == "sd3" else SD15_CONFIG, sampler, schedule, family=family)


def test_schedule_types_for():
    assert schedule_types_for("Euler") == SCHEDULE_TYPES
    assert schedule_types_for("Euler a") == ["Automatic", "Uniform", "SGM Uniform"]
    assert schedule_types_for("DDIM") == ["Automatic", "SGM Uniform"]
    assert schedule_types_for("PNDM") == ["Automatic", "SGM Uniform"]
    assert schedule_types_for("DPM++ 2M Karras") == ["Automatic", "Karras"]
    assert schedule_types_for("Flow Euler", "sd3") == ["Automatic", "Uniform", "Karras", "Exponential", "Beta"]
    assert schedule_types_for("Flow Heun", "sd3") == ["Automatic", "Uniform"]


def test_automatic_follows_a1111_defaults():
    assert resolve_sampler("DPM++ 2M") == ("DPM++ 2M", "Karras")
    assert resolve_sampler("DPM++ 2M SDE") == ("DPM++ 2M SDE", "Exponential")
    assert resolve_sampler("DPM++ SDE") == ("DPM++ SDE", "Karras")
    assert resolve_sampler("DPM2 a") == ("DPM2 a", "Karras")
    assert resolve_sampler("Euler a") == ("Euler a", "Uniform")
    assert resolve_sampler("Euler", "Automatic") == ("Euler", "Uniform")
    assert resolve_sampler("DDIM") == ("DDIM", "Automatic")
    assert resolve_sampler("Flow Euler", family="sd3") == ("Flow Euler", "Automatic")
    assert make_scheduler(SD15_CONFIG, "DPM++ 2M").config.use_karras_sigmas is True
    assert make_scheduler(SD15_CONFIG, "DPM++ 2M", "Uniform").config.use_karras_sigmas is False
    # "Automatic" for DDIM keeps the model's own spacing (leading + steps_offset 1 for SD).
    ddim = make_scheduler(SDXL_CONFIG, "DDIM")
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1


def test_legacy_names_and_aliases():
    assert resolve_sampler("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert resolve_sampler("DPM++ 2M Karras", "Karras") == ("DPM++ 2M", "Karras")
    assert resolve_sampler("DPM2 a Karras") == ("DPM2 a", "Karras")
    assert resolve_sampler("LMS Karras") == ("LMS", "Karras")
    assert resolve_sampler("DPM++ 2M SDE Karras") == ("DPM++ 2M SDE", "Karras")
    assert resolve_sampler("k_euler_a") == ("Euler a", "Uniform")
    assert resolve_sampler("euler A") == ("Euler a", "Uniform")
    assert resolve_sampler("PLMS") == ("PNDM", "Automatic")
    assert resolve_sampler("Euler", "karras") == ("Euler", "Karras")
    assert resolve_sampler("Euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert resolve_sampler("Euler", family="sd3") == ("Flow Euler", "Automatic")
    assert resolve_sampler("DPM++ 2M", family="sd3") == ("Flow DPM++ 2M", "Automatic")
    assert resolve_sampler("k_dpmpp_2m_sde_ka") == ("DPM++ 2M SDE", "Karras")
    assert resolve_sampler("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert resolve_sampler("k_euler", family="sd3") == ("Flow Euler", "Automatic")
    for alias in sch_mod._ALIASES:
        assert resolve_sampler(alias)[0] in SAMPLERS
    assert make_scheduler(SD15_CONFIG, "LMS Karras").config.use_karras_sigmas is True
    with pytest.raises(UnsupportedScheduleTypeError, match="implies"):
        make_scheduler(SD15_CONFIG, "DPM++ 2M Karras", "Exponential")
    with pytest.raises(UnknownSamplerError):
        resolve_sampler("Euler a Karras")  # diffusers' Euler a has no Karras sigmas


@pytest.mark.parametrize("family,name", [("sd1", "Nonexistent"), ("sd1", "Flow Euler"), ("sd3", "Euler a"),
                                         ("sdxl", "DPM++ 2S a"), ("sd3", "DDIM"), ("sd1", "")])
def test_unknown_sampler_lists_valid_names(family, name):
    with pytest.raises(UnknownSamplerError) as info:
        make_scheduler(SD3_CONFIG if family == "sd3" else SD15_CONFIG, name, family=family)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for valid in samplers_for(family):
        assert valid in message
    assert info.value.valid == samplers_for(family)


def test_unknown_family():
    with pytest.raises(ValueError, match="family"):
        make_scheduler(SD15_CONFIG, "Euler", family="sd5")


def test_config_of_the_wrong_kind():
    with pytest.raises(ValueError, match="flow-matching"):
        make_scheduler(SD3_CONFIG, "Euler", family="sdxl")
    with pytest.raises(ValueError, match="not a flow-matching"):
        make_scheduler(SD15_CONFIG, "Flow Euler", family="sd3")


def test_switching_repeatedly_starts_from_the_original_config():
    config = SDXL_CONFIG
    scheduler = make_scheduler(config, "DPM++ 2M SDE", "Karras", family="sdxl")
    scheduler = make_scheduler(scheduler.config, "Euler", "SGM Uniform", family="sdxl")
    scheduler = make_scheduler(scheduler.config, "DDIM", family="sdxl")
    assert scheduler.config.timestep_spacing == "leading"  # SDXL's own, not SGM Uniform's
    scheduler = make_scheduler(scheduler.config, "Euler", "Automatic", family="sdxl")
    assert scheduler.config.use_karras_sigmas is False
    scheduler = make_scheduler(scheduler, "DPM++ 2M", "Uniform", family="sdxl")  # an instance works too
    assert scheduler.config.algorithm_type == "dpmsolver++"
    assert scheduler.config.use_karras_sigmas is False

    flow = make_scheduler(SD3_CONFIG, "Flow DPM++ 2M", family="sd3")
    flow = make_scheduler(flow.config, "Flow Euler", family="sd3")
    assert flow.config.shift == 3.0
    flow = make_scheduler(flow.config, "Flow Heun", family="sd3")
    assert flow.config.shift == 3.0


def test_config_survives_save_and_reload(tmp_path):
    scheduler = make_scheduler(SD21_CONFIG, "DPM++ 2M", "Karras", family="sd2")
    scheduler.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DPMSolverMultistepScheduler"
    again = make_scheduler(saved, "DDIM", family="sd2")
    assert again.config.prediction_type == "v_prediction"
    assert again.config.clip_sample is False


def test_no_unexpected_config_warnings(caplog):
    import logging

    from diffusers.utils import logging as dlogging

    dlogging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            for name in samplers_for("sd1"):
                scheduler = make_scheduler(SDXL_CONFIG, name, family="sdxl")
                make_scheduler(scheduler.config, "Euler", family="sdxl")
            for name in samplers_for("sd3"):
                make_scheduler(SD3_CONFIG, name, family="sd3")
    finally:
        dlogging.disable_propagation()
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]


def test_dpmpp_sde_is_seeded():
    _requires("DPM++ SDE")

    def run(seed):
        scheduler = make_scheduler(SD15_CONFIG, "DPM++ SDE", seed=seed)
        scheduler.set_timesteps(4)
        return _denoise(scheduler, lambda x, t: 0.1 * x, _initial(scheduler))

    assert make_scheduler(SD15_CONFIG, "DPM++ SDE", seed=7).config.noise_sampler_seed == 7
    assert make_scheduler(SD15_CONFIG, "DPM++ SDE").config.noise_sampler_seed == 0
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_returned_scheduler_is_independent():
    a = make_scheduler(SD15_CONFIG, "Euler")
    b = make_scheduler(SD15_CONFIG, "Euler")
    assert a is not b
    a.set_timesteps(4)
    b.set_timesteps(10)
    assert len(a.timesteps) == 4


# --- real pipelines (tiny random models, offline) ---------------------------------------


@pytest.fixture(scope="module")
def tiny_sd_pipeline():
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    from diffusers import PNDMScheduler

    return StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=PNDMScheduler.from_config(SD15_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.mark.parametrize("sampler", NON_FLOW)
def test_sd_pipeline_runs_every_sampler(tiny_sd_pipeline, sampler):
    _requires(sampler)
    pipe = tiny_sd_pipeline
    pipe.scheduler = make_scheduler(pipe.scheduler.config, sampler, family="sd1")
    embeds = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(1))
    out = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=3,
        height=64, width=64, guidance_scale=5.0, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()


@pytest.fixture(scope="module")
def tiny_sd3_pipeline():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers import StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
        pos_embed_max_size=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_CONFIG), vae=vae,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None,
    )


@pytest.mark.parametrize("sampler", FLOW)
def test_sd3_pipeline_runs_every_flow_sampler(tiny_sd3_pipeline, sampler):
    pipe = tiny_sd3_pipeline
    pipe.scheduler = make_scheduler(pipe.scheduler.config, sampler, family="sd3")
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, 7, 16, generator=gen)
    pooled = torch.randn(1, 8, generator=gen)
    out = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds),
        pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=torch.zeros_like(pooled),
        num_inference_steps=3, height=64, width=64, guidance_scale=5.0, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
