"""The shipped offline demo model: small, the offline default, and it draws what it is asked.

Its measured quality (``python -m tools.demo_model.evaluate``) becomes thresholds a little
below the measured values, so a regression in the generation path, a sampler or a memory
option that damages images fails here. The images are drawn through Easel's own
generation path (``context.generate``), not a bare pipeline.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tools.demo_model.evaluate import adherence, easel_drawer, eval_prompts, judgements, profile_context, vae_psnr
from webui.app import AppOptions, create_context
from webui.pipelines import sources
from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME, ModelCatalog, hub_reachable

SHIPPED = (DEMO_MODEL_DIR / "model_index.json").is_file()
needs_weights = pytest.mark.skipif(not SHIPPED, reason="the demo model's weights are not shipped yet (issue 6)")

# Measured on the shipped weights (docs/benchmarks.md, "Offline demo model"), minus a margin.
# Measured: colours 1.000, shape 0.969, size 1.000, VAE 32.66 dB.
MIN_COLOURS = 0.97
MIN_SHAPE = 0.92
MIN_SIZE = 0.95
MIN_VAE_PSNR = 32.3
# Lowest PSNR (dB) against ``none`` of the profiles that are not exact, a little below the measured values.
QUANTO_INT8_MIN_PSNR = 50.0  # measured 53.7 and 53.6
FP8_STORAGE_MIN_PSNR = 36.0  # measured 39.1 and 40.8
VAE_TILED_64_MIN_PSNR = 26.0  # 64 px tiles are coarse for this VAE: 28.0 and 28.3 measured


@needs_weights
def test_shipped_weights_are_small_safetensors_that_record_their_training():
    from diffusers import StableDiffusionPipeline

    files = [p for p in DEMO_MODEL_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 20 * 1024 * 1024
    record = json.loads((DEMO_MODEL_DIR / "training.json").read_text(encoding="utf-8"))
    # the shipped weights were trained before the trainer moved from webui/ to tools/
    assert record["trainer"] in ("webui.demo_model.train", "tools.demo_model.train")
    assert "seed" in record and record["config"]["unet_steps"] > 0
    with safe_open(str(DEMO_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["easel_demo_training"])["seed"] == record["seed"]
    pipe = StableDiffusionPipeline.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32, local_files_only=True)
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert len(pipe.tokenizer("a small red circle on an orange background").input_ids) == 10  # a token a word


def fake_demo_folder(folder):
    """What the catalog looks for: a diffusers folder (model_index.json and weights)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return folder


def test_the_demo_is_the_default_offline_and_yields_to_a_configured_model(make_context, monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1 must not touch the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    assert hub_reachable() is False
    monkeypatch.setattr(sources, "DEMO_MODEL_DIR", tmp_path / "absent")
    assert make_context().default_model == "tiny"  # without the demo weights: the first built-in
    monkeypatch.setattr(sources, "DEMO_MODEL_DIR", fake_demo_folder(tmp_path / "demo"))
    context = make_context()
    assert context.default_model == DEMO_MODEL_NAME
    source = context.model_source(DEMO_MODEL_NAME)
    assert "offline demo model" in source.label and "models/Stable-diffusion" in source.note
    assert context.native_size_of(DEMO_MODEL_NAME) == 128 and context.native_size_of("tiny-sdxl") == 1024
    assert context.family_of(DEMO_MODEL_NAME) == "sd1"
    assert make_context(model="tiny").default_model == "tiny"
    catalog = ModelCatalog(context.models_dir)
    assert catalog.default_name(hub_reachable=lambda: True) == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    (context.models_dir / "Stable-diffusion" / "mine.safetensors").write_bytes(b"")
    assert catalog.default_name(hub_reachable=lambda: False) == "mine.safetensors"
    assert catalog.default_name(hub_reachable=lambda: pytest.fail("probed with a local model")) == "mine.safetensors"


def test_hub_reachable_asks_the_endpoint_when_online(monkeypatch):
    asked = []

    class Answer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        asked.append((request.full_url, request.get_method(), timeout))
        return Answer()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example")
    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    assert hub_reachable(timeout=0.5) is True
    assert asked == [("http://hub.example/api/models?limit=1", "HEAD", 0.5)]

    def refused(request, timeout):
        raise OSError("no route")

    monkeypatch.setattr("urllib.request.urlopen", refused)
    assert hub_reachable() is False


@pytest.fixture(scope="module")
def none_context(tmp_path_factory):
    context = profile_context(tmp_path_factory.mktemp("demo-none"), "none")
    yield context
    context.pipelines.unload_all()


@needs_weights
@pytest.mark.slow
def test_prompt_adherence_and_vae_fidelity_hold(none_context):
    from diffusers import AutoencoderKL

    scores = adherence(judgements(easel_drawer(none_context, DEMO_MODEL_NAME), eval_prompts(64)))
    assert scores["colours"] >= MIN_COLOURS, scores
    assert scores["shape"] >= MIN_SHAPE, scores
    assert scores["size"] >= MIN_SIZE, scores
    vae = AutoencoderKL.from_pretrained(DEMO_MODEL_DIR / "vae", dtype=torch.float32)
    assert vae_psnr(vae) >= MIN_VAE_PSNR


# Every memory profile that runs on the CPU, judged against ``none`` on the demo model: one
# caption drawn as a batch of two seeds (VAE slicing only slices a batch of more than one) at
# 128 px and PROFILE_STEPS Euler steps. Per profile: how the VAE decoder runs ("batch": once for
# the batch, "image": once per image, "tiles": several times per image) and the lowest PSNR (dB)
# against the ``none`` image (inf: within one 8-bit level of it; the exact profiles measured 85-95
# dB, one level at most).
PROFILE_STEPS = 8
PROFILE_CAPTION, PROFILE_SEED = eval_prompts(1)[0]
CPU_PROFILES = {
    "sliced": ("batch", math.inf),
    "vae-sliced": ("image", math.inf),
    "channels-last": ("batch", math.inf),
    "vae-tiled": ("batch", math.inf),  # the model's own 512 px tiles: a 128 px image is one tile
    "vae-tiled-64": ("tiles", VAE_TILED_64_MIN_PSNR),
    "medvram": ("image", math.inf),  # on the CPU: VAE slicing, tiling above 1536 px
    "lowvram": ("image", math.inf),  # on the CPU: VAE slicing, 256 px tiles (one tile at 128 px)
    "quanto-int8": ("batch", QUANTO_INT8_MIN_PSNR),
    "fp8-storage": ("batch", FP8_STORAGE_MIN_PSNR),
}
EXTRA_PROFILES = {"vae-tiled-64": {"vae.tiling": "on", "vae.tile_size": 64}}


def draw_profile(work, profile):
    """The two images of the profile's batch (uint8 arrays), their judgements and the decoder calls."""
    from tools.bench.memory import PROFILES
    from tools.demo_model.judge import judge
    from tools.demo_model.shapes import parse_caption
    from webui.jobs import GenerationRequest

    settings = EXTRA_PROFILES.get(profile) or PROFILES[profile]["settings"]
    context = create_context(AppOptions(models_dir=work / "models", outputs_dir=work / "outputs",
                                        data_dir=work / f"data-{profile}", device="cpu", entry_points=False,
                                        max_loaded=1, setting_overrides=dict(settings)))
    decodes = []
    try:
        with context.pipelines.use(DEMO_MODEL_NAME) as model:
            model.pipeline.set_progress_bar_config(disable=True)
            model.pipeline.vae.decoder.register_forward_pre_hook(lambda module, args: decodes.append(args[0].shape[0]))
        request = GenerationRequest(prompt=PROFILE_CAPTION, model=DEMO_MODEL_NAME, sampler="Euler",
                                    steps=PROFILE_STEPS, cfg_scale=5.0, width=128, height=128, seed=PROFILE_SEED,
                                    batch_size=2, save=False)
        images = [record.image for record in context.generate(request).images]
    finally:
        context.pipelines.unload_all()
    verdicts = [judge(image).matches(parse_caption(PROFILE_CAPTION)) for image in images]
    return [np.asarray(image, dtype=np.float64) for image in images], verdicts, decodes


def psnr(image, reference):
    mse = float(((image - reference) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def none_profile(tmp_path_factory):
    return draw_profile(tmp_path_factory.mktemp("profile-none"), "none")


@needs_weights
@pytest.mark.slow
@pytest.mark.parametrize("profile", list(CPU_PROFILES))
def test_memory_profiles_draw_what_none_draws(none_profile, tmp_path, profile):
    """Each profile draws the caption as judged (shape colour, background colour, shape, size all match,
    as for ``none``), within its measured PSNR of the ``none`` image, with the VAE decode it claims."""
    reference, reference_verdicts, reference_decodes = none_profile
    assert reference_decodes == [2]
    assert all(all(verdict.values()) for verdict in reference_verdicts), reference_verdicts
    decoder, min_psnr = CPU_PROFILES[profile]
    images, verdicts, decodes = draw_profile(tmp_path, profile)
    if decoder == "batch":
        assert decodes == [2]
    elif decoder == "image":
        assert decodes == [1, 1]
    else:
        assert len(decodes) >= 4, decodes  # 64 px tiles over a 128 px image: at least 2 x 2 (measured 9)
    assert verdicts == reference_verdicts
    values = [psnr(image, ref) for image, ref in zip(images, reference)]
    differences = [float(np.abs(image - ref).max()) for image, ref in zip(images, reference)]
    if min_psnr == math.inf:
        assert max(differences) <= 1.0, differences  # exact: float rounding at most
    else:
        assert max(differences) >= 1.0, differences  # the profile did change the arithmetic
        assert min(values) >= min_psnr, values


@needs_weights
@pytest.mark.slow
def test_the_evaluation_script_reports_a_quantized_profile_against_none(capsys):
    from tools.demo_model.evaluate import main

    assert main(["--profiles", "none,quanto-int8", "--pairs", "4"]) == 0
    out = capsys.readouterr().out
    assert "[none] colours" in out and "[quanto-int8] colours" in out and "change vs none: colours" in out
    assert "VAE reconstruction PSNR" in out and "shipped size" in out
