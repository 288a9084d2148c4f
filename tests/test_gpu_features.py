"""The CUDA-only options, each through real generations on the shipped demo model.

Every option is judged on its output and its memory, against the ``none`` profile on the
same GPU: the same (caption, seed) pairs are drawn through Easel's own generation path, the
demo model's judge grades every image, the PSNR against ``none``'s image tells how much the
option changed the pixels, and ``torch.cuda`` gives two memory figures: what the loaded model
holds on the GPU before generating (``loaded_bytes``) and the most allocated while generating
(``peak_bytes``). The figures go to ``record_figures`` (``python -m tools.gpu_check`` writes
them to docs/benchmarks.md).

Thresholds are first estimates from the theory of each option (exact placement changes give
the same pixels; quantization may change them but must keep what the image shows); tighten
them to a margin below the figures the first GPU run records.

Without CUDA the whole module is skipped; without bitsandbytes or xformers (requirements-gpu.txt)
their tests are skipped with the reason.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").is_file(), reason="the demo model is not shipped"),
]

PAIRS = 8  # (caption, seed) pairs of the demo model's evaluation set
STEPS = 20
#: Every profile must keep at least these shares of the judged attributes (the demo model scores
#: colours 1.00, shape 0.97, size 1.00 on the CPU over 64 pairs: 8 pairs allow one miss each).
MIN_ADHERENCE = {"colours": 7 / 8, "shape": 6 / 8, "size": 7 / 8}
EXACT_PSNR = 40.0  # placement only (offload): the same kernels on the same weights
NEAR_PSNR = 30.0  # another attention kernel or compiled blocks: float rounding only


def has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@dataclass
class Measured:
    """The images one profile drew and what they cost."""

    profile: str
    images: list[np.ndarray]
    verdicts: list[dict[str, bool]]
    infotexts: list[str]
    loaded_bytes: int  # GPU memory the loaded model holds before generating
    peak_bytes: int  # the most GPU memory allocated while generating
    seconds: float
    inspected: dict[str, Any] = field(default_factory=dict)

    def adherence(self) -> dict[str, float]:
        from tools.demo_model.evaluate import adherence

        return adherence(self.verdicts)

    def psnr_against(self, other: "Measured") -> float:
        """The lowest per-image PSNR (dB) of this profile's images against ``other``'s."""
        return min(psnr(a, b) for a, b in zip(self.images, other.images))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(base: Path, profile: str, settings: dict[str, Any],
            inspect: Callable[[Any], dict[str, Any]] | None = None) -> Measured:
    """Load the demo model on CUDA with ``settings``, draw the evaluation pairs, judge them, unload."""
    from tests.conftest import make_options
    from webui.app import create_context
    from tools.demo_model.evaluate import EVAL_CFG, EVAL_SIDE, eval_prompts
    from tools.demo_model.judge import judge
    from tools.demo_model.shapes import parse_caption
    from webui.jobs import GenerationRequest

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    context = create_context(make_options(base / profile, device="cuda", max_loaded=1,
                                          setting_overrides=dict(settings)))
    with context.pipelines.use(DEMO_MODEL_NAME) as model:
        model.pipeline.set_progress_bar_config(disable=True)
        inspected = inspect(model) if inspect else {}
    torch.cuda.synchronize()
    loaded = torch.cuda.memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()
    images, infotexts, verdicts = [], [], []
    pairs = eval_prompts(PAIRS)
    started = time.monotonic()
    for caption, seed in pairs:
        result = context.generate(GenerationRequest(prompt=caption, model=DEMO_MODEL_NAME, sampler="Euler",
                                                    steps=STEPS, cfg_scale=EVAL_CFG, width=EVAL_SIDE,
                                                    height=EVAL_SIDE, seed=seed, save=False))
        image = result.images[0].image
        images.append(np.asarray(image.convert("RGB")))
        infotexts.append(result.images[0].infotext)
        verdicts.append(judge(image).matches(parse_caption(caption)))
    torch.cuda.synchronize()
    seconds = time.monotonic() - started
    peak = torch.cuda.max_memory_allocated() - before
    context.pipelines.unload_all()
    del context
    gc.collect()
    torch.cuda.empty_cache()
    return Measured(profile, images, verdicts, infotexts, loaded, peak, seconds, inspected)


def record(record_figures, measured: Measured, reference: Measured | None = None) -> None:
    figures = {"profile": measured.profile, "device": torch.cuda.get_device_name(0),
               "loaded_MiB": round(measured.loaded_bytes / 2**20, 2),
               "peak_MiB": round(measured.peak_bytes / 2**20, 2),
               "s_per_image": round(measured.seconds / len(measured.images), 3),
               **{f"adherence_{key}": round(value, 3) for key, value in measured.adherence().items()}}
    if reference is not None:
        value = measured.psnr_against(reference)
        figures["min_psnr_vs_none_dB"] = "inf" if math.isinf(value) else round(value, 2)
    record_figures(measured.profile, **figures)


def assert_draws_what_is_asked(measured: Measured) -> None:
    scores = measured.adherence()
    assert all(scores[key] >= minimum for key, minimum in MIN_ADHERENCE.items()), (measured.profile, scores)


def warm_up_cuda() -> None:
    """Create what CUDA keeps for the whole process (cuBLAS/cuDNN handles and workspaces) before the
    first measurement, so it is not charged to whichever profile happens to run first."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        a = torch.ones(64, 64, device="cuda", dtype=dtype)
        (a @ a).sum().item()
        torch.nn.functional.conv2d(a[None, None], a[None, None, :3, :3]).sum().item()


@pytest.fixture(scope="module")
def none_profile(tmp_path_factory) -> Measured:
    """The reference: the demo model on the GPU with every memory option off."""
    warm_up_cuda()
    return measure(tmp_path_factory.mktemp("gpu-none"), "none", {"vae.tiling": "off"})


def test_the_reference_profile_draws_what_is_asked(none_profile, record_figures):
    record(record_figures, none_profile)
    assert_draws_what_is_asked(none_profile)
    assert none_profile.loaded_bytes > 0 and none_profile.peak_bytes >= none_profile.loaded_bytes


def layer_types(model) -> dict[str, Any]:
    pipe = model.pipeline
    return {"unet": {type(m).__name__ for m in pipe.unet.modules()},
            "text_encoder": {type(m).__name__ for m in pipe.text_encoder.modules()}}


@pytest.mark.skipif(not has("bitsandbytes"), reason="bitsandbytes is not installed (requirements-gpu.txt)")
@pytest.mark.parametrize("method, layer", [("bnb-nf4", "Linear4bit"), ("bnb-int8", "Linear8bitLt")])
def test_bitsandbytes_quantization_generates_what_none_does(none_profile, record_figures, tmp_path, method,
                                                            layer):
    """bitsandbytes quantizes the UNet's (and text encoder's) linear layers while loading: the
    loaded model holds less GPU memory than ``none``, and the images still show what was asked."""
    measured = measure(tmp_path, method, {"vae.tiling": "off", "quantization.method": method,
                                          "quantization.text_encoders": True}, inspect=layer_types)
    record(record_figures, measured, none_profile)
    assert layer in measured.inspected["unet"] and layer in measured.inspected["text_encoder"]
    assert all(f"Quantization: {method}" in info for info in measured.infotexts)
    assert measured.loaded_bytes < none_profile.loaded_bytes, (measured.loaded_bytes, none_profile.loaded_bytes)
    assert_draws_what_is_asked(measured)
    assert measured.psnr_against(none_profile) > 12.0  # not noise: the same pictures, a little changed


@pytest.mark.parametrize("mode", ["model", "sequential", "group-block", "group-leaf"])
def test_offload_generates_the_image_of_none_with_less_memory(none_profile, record_figures, tmp_path, mode):
    """Offload only moves weights between CPU and GPU: the same pixels as ``none``, while the model
    holds at most half of ``none``'s GPU memory once loaded and the generation peaks lower."""
    measured = measure(tmp_path, f"offload-{mode}", {"vae.tiling": "off", "offload.mode": mode})
    record(record_figures, measured, none_profile)
    assert all(f"Offload: {mode}" in info for info in measured.infotexts)
    assert measured.loaded_bytes <= none_profile.loaded_bytes / 2, (measured.loaded_bytes, none_profile.loaded_bytes)
    assert measured.peak_bytes < none_profile.peak_bytes, (measured.peak_bytes, none_profile.peak_bytes)
    assert measured.psnr_against(none_profile) >= EXACT_PSNR
    assert measured.verdicts == none_profile.verdicts


def attention_processors(model) -> dict[str, Any]:
    return {"processors": {type(p).__name__ for p in model.pipeline.unet.attn_processors.values()}}


@pytest.mark.skipif(not has("xformers"), reason="xformers is not installed (requirements-gpu.txt)")
def test_xformers_attention_generates_the_image_of_none(none_profile, record_figures, tmp_path):
    """xformers' memory-efficient kernels replace SDPA: the same pictures up to float rounding, and
    no more memory than SDPA's own memory-efficient kernels (a fallback to plain attention would
    materialise every attention matrix)."""
    measured = measure(tmp_path, "xformers", {"vae.tiling": "off", "attention.backend": "xformers"},
                       inspect=attention_processors)
    record(record_figures, measured, none_profile)
    assert measured.inspected["processors"] == {"XFormersAttnProcessor"}
    assert measured.psnr_against(none_profile) >= NEAR_PSNR
    assert measured.verdicts == none_profile.verdicts
    assert measured.peak_bytes <= none_profile.peak_bytes * 1.25


def test_regional_compile_runs_compiled_blocks_and_keeps_the_image(none_profile, record_figures, tmp_path):
    """``speed.compile`` compiles the UNet's repeated blocks: dynamo captures graphs while the
    model generates, the pictures are those of ``none`` up to float rounding, memory stays close."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    measured = measure(tmp_path, "compile", {"vae.tiling": "off", "speed.compile": True})
    graphs = counters["stats"]["unique_graphs"]
    record(record_figures, measured, none_profile)
    record_figures("compile-graphs", graphs=graphs)
    assert graphs >= 1, dict(counters["stats"])
    assert measured.psnr_against(none_profile) >= NEAR_PSNR
    assert measured.verdicts == none_profile.verdicts
    assert measured.peak_bytes <= none_profile.peak_bytes * 1.5


def test_lowvram_with_nf4_profile_fits_in_a_fraction_of_none(none_profile, record_figures, tmp_path):
    """The benchmark's lowest profile (group-leaf offload + NF4 text encoders and UNet) on the demo
    model: it still draws what is asked and peaks below ``none``."""
    if not has("bitsandbytes"):
        pytest.skip("bitsandbytes is not installed (requirements-gpu.txt)")
    from tools.bench.memory import PROFILES

    measured = measure(tmp_path, "lowvram+nf4", dict(PROFILES["lowvram+nf4"]["settings"]))
    record(record_figures, measured, none_profile)
    assert_draws_what_is_asked(measured)
    assert measured.peak_bytes < none_profile.peak_bytes
