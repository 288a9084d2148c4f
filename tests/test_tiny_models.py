"""Built-in tiny models (webui.pipelines.tiny) and single-file export (webui.pipelines.export).

CPU only, offline: everything is built from configs with random weights.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pathlib  # noqa: E402

import diffusers  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_state_dict  # noqa: E402

from webui.pipelines.export import export_single_file  # noqa: E402
from webui.pipelines.tiny import TINY_MODELS, build_tiny_pipeline, save_tiny_pipeline  # noqa: E402

PROMPT = "a painting of a squirrel eating a burger"

EXPECTED_CLASS = {
    "tiny": "StableDiffusionPipeline",
    "tiny-sd2": "StableDiffusionPipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
}

# What diffusers' own checkpoint classifier says about the exported single files.
EXPECTED_MODEL_TYPE = {
    "tiny": "v1",
    "tiny-sd2": "v2",
    "tiny-sdxl": "xl_base",
    "tiny-sdxl-refiner": "xl_refiner",
    "tiny-sd3": "sd35_large",
}

EXPECTED_KEY_PREFIXES = {
    "tiny": ["model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."],
    "tiny-sd2": ["model.diffusion_model.", "first_stage_model.", "cond_stage_model.model.transformer.resblocks."],
    "tiny-sdxl": ["model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
                  "conditioner.embedders.1.model.transformer.resblocks."],
    "tiny-sdxl-refiner": ["model.diffusion_model.", "first_stage_model.",
                          "conditioner.embedders.0.model.transformer.resblocks."],
    "tiny-sd3": ["model.diffusion_model.joint_blocks.", "first_stage_model.", "text_encoders.clip_l.transformer.",
                 "text_encoders.clip_g.transformer.", "text_encoders.t5xxl.transformer."],
}

NAMES = list(TINY_MODELS)


def generate(pipe, name, seed=0):
    """64x64, 2 steps, guidance 5, fixed seed; returns the image batch as a float tensor."""
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                  generator=torch.Generator().manual_seed(seed), output_type="pt")
    if name == "tiny-sdxl-refiner":
        kwargs["image"] = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        kwargs["strength"] = 0.9
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kwargs).images


def state_dicts(pipe):
    return {name: module.state_dict() for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module)}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads; on a busy CPU the OpenMP threads of
    several processes spin against each other and make these tests 5-10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def built():
    """One fp32 build per tiny model, shared by the tests of this module."""
    return {}


def get(built, name):
    if name not in built:
        pipe = build_tiny_pipeline(name)
        built[name] = (pipe, generate(pipe, name))
    return built[name]


def test_catalogue():
    assert TINY_MODELS == {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl",
                           "tiny-sdxl-refiner": "sdxl-refiner", "tiny-sd3": "sd3"}
    with pytest.raises(KeyError):
        build_tiny_pipeline("no-such-model")


@pytest.mark.parametrize("name", NAMES)
def test_build_generate_and_determinism(built, name):
    pipe, image = get(built, name)
    assert type(pipe).__name__ == EXPECTED_CLASS[name]
    assert pipe.vae_scale_factor == 8
    assert image.shape == (1, 3, 64, 64)
    assert torch.isfinite(image).all()
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0

    # Same weights on every build, whatever the global RNG state, and the RNG is left alone.
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again = build_tiny_pipeline(name)
    assert torch.equal(torch.rand(3), expected_next)
    first, second = state_dicts(pipe), state_dicts(again)
    assert first.keys() == second.keys()
    for component, sd in first.items():
        assert sd.keys() == second[component].keys()
        for key, value in sd.items():
            assert torch.equal(value, second[component][key]), f"{component}.{key} differs between builds"
    # Same seed -> same image; another seed -> another image.
    assert torch.equal(generate(again, name), image)
    assert not torch.equal(generate(again, name, seed=1), image)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(built, name, tmp_path):
    pipe, image = get(built, name)
    folder = save_tiny_pipeline(name, tmp_path / "model")
    assert isinstance(folder, pathlib.Path) and (folder / "model_index.json").is_file()
    assert not list(folder.rglob("*.bin"))
    loaded = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert type(loaded) is type(pipe)
    assert torch.equal(generate(loaded, name), image)


@pytest.mark.parametrize("name", NAMES)
def test_single_file_round_trip(built, name, tmp_path):
    pipe, image = get(built, name)
    path = export_single_file(pipe, tmp_path / f"{name}.safetensors")
    assert path.is_file()

    checkpoint = load_state_dict(str(path))
    assert infer_diffusers_model_type(checkpoint) == EXPECTED_MODEL_TYPE[name]
    for prefix in EXPECTED_KEY_PREFIXES[name]:
        assert any(key.startswith(prefix) for key in checkpoint), prefix

    # Config folder without weights: every weight must come from the single file.
    config = save_tiny_pipeline(name, tmp_path / "config")
    for weights in config.rglob("*.safetensors"):
        weights.unlink()
    loaded = type(pipe).from_single_file(str(path), config=str(config), local_files_only=True)
    assert torch.equal(generate(loaded, name), image)


def test_cast_to_half():
    pipe = build_tiny_pipeline("tiny", torch_dtype=torch.float16)
    dtypes = {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()}
    assert dtypes == {torch.float16}


def test_tokenizer_handles_any_prompt_and_long_prompts():
    pipe = build_tiny_pipeline("tiny")
    tokenizer = pipe.tokenizer
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) <= pipe.text_encoder.config.vocab_size
    ids = tokenizer("Ünïcode, émoji 😀 and 日本語 — all tokenize").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    long = tokenizer("x" * 200, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(long) == 77
    # about one token per character: a 75-character prompt fills the 77-token window
    assert len(tokenizer("a" * 75).input_ids) == 77


def test_refiner_refines_sdxl_latents():
    base = build_tiny_pipeline("tiny-sdxl")
    refiner = build_tiny_pipeline("tiny-sdxl-refiner")
    base.set_progress_bar_config(disable=True)
    refiner.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    latents = base(prompt=PROMPT, num_inference_steps=2, height=64, width=64, generator=generator,
                   denoising_end=0.5, output_type="latent").images
    assert latents.shape == (1, 4, 8, 8)
    image = refiner(prompt=PROMPT, image=latents, num_inference_steps=2, denoising_start=0.5,
                    generator=generator, output_type="pt").images
    assert image.shape == (1, 3, 64, 64)
    # refiner and base share the VAE and the OpenCLIP-bigG text encoder
    assert torch.equal(base.vae.encoder.conv_in.weight, refiner.vae.encoder.conv_in.weight)
    assert torch.equal(base.text_encoder_2.text_projection.weight, refiner.text_encoder_2.text_projection.weight)


def test_sd2_and_sd3_specifics():
    sd2 = build_tiny_pipeline("tiny-sd2")
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    assert sd2.text_encoder.config.hidden_act == "gelu"
    assert sd2.unet.config.use_linear_projection is True
    assert isinstance(sd2.unet.config.attention_head_dim, (list, tuple))
    for scheduler in (sd2.scheduler, build_tiny_pipeline("tiny").scheduler):
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert diffusers.DDIMScheduler.from_config(scheduler.config).config.clip_sample is False

    sd3 = build_tiny_pipeline("tiny-sd3")
    assert isinstance(sd3.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    assert sd3.vae.config.latent_channels == 16
    assert sd3.vae.config.shift_factor is not None and sd3.vae.config.scaling_factor != 0.18215
    assert type(sd3.text_encoder_3).__name__ == "T5EncoderModel"
    assert len(sd3.tokenizer_3) <= sd3.text_encoder_3.config.vocab_size
