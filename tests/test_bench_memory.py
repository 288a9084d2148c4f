"""CPU smoke run of the memory benchmark (tiny sizes): profiles table, matrix + heatmap, budget search."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    """One model cache for the module: the first test writes the bench-sd1 folder, the next reuse it."""
    return tmp_path_factory.mktemp("bench-cache")


def test_memory_benchmark_smoke(tmp_path, capsys, bench_cache):
    from tools.bench.memory import main

    out = tmp_path / "out"
    report_path = tmp_path / "report.json"
    code = main(["--sizes", "64", "--profiles", "none,vae-sliced", "--steps", "1", "--batch-size", "2",
                 "--matrix", "64,128",
                 "--cache", str(bench_cache),
                 "--out", str(out), "--json", str(report_path), "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| 64x64 | none |" in printed and "| 64x64 | vae-sliced |" in printed
    report = json.loads(report_path.read_text())
    rows = {row["profile"]: row for row in report["profiles"]}
    assert all(row["ok"] for row in rows.values()), rows
    none, sliced = rows["none"], rows["vae-sliced"]
    assert none["peak_bytes"] > 100 * 1024**2 and none["peak_bytes"] == none["peak_rss"]  # CPU: child's RSS
    # one step: its time lies inside the generation's total (text encoding, the step, the VAE decode)
    assert 0 < none["s_per_step"] < none["total_s"] and 0 < sliced["s_per_step"] < sliced["total_s"]
    # a batch of two: none decodes it in one call, vae-sliced one image at a time, to the same pixels
    # (float rounding aside: one 8-bit level at most; measured 83.6 dB)
    assert none["vae_decodes"] == [2] and sliced["vae_decodes"] == [1, 1]
    assert sliced["max_diff"] <= 1 and sliced["psnr"] > 60, (sliced["max_diff"], sliced["psnr"])
    assert len(report["matrix"]) == 4 and all(report["matrix"].values())
    assert report["matrix"]["64x64"] == none["peak_bytes"]  # the profiles table's run, not measured again
    assert (out / "heatmap-bench-sd1-none.png").stat().st_size > 1000


def test_budget_search(tmp_path, bench_cache):
    """A budget below the process's own footprint stops the child (nothing fits); a roomy one fits."""
    from tools.bench.archs import ensure_arch_folder
    from tools.bench.memory import largest_square

    folder = ensure_arch_folder("bench-sd1", bench_cache)
    base = {"arch": "bench-sd1", "folder": str(folder), "work": str(tmp_path), "device": "cpu", "steps": 1}
    assert largest_square(base, "none", 200 * 1024**2, 64, 128, log=lambda line: None) is None
    assert largest_square(base, "none", 16 * 1024**3, 64, 64, log=lambda line: None) == 64


def test_psnr_and_pillow_heatmap(tmp_path):
    import numpy as np
    from PIL import Image

    from tools.bench.memory import draw_heatmap, psnr

    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 10
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    value, peak = psnr(str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert peak == 10 and abs(value - 10 * math.log10(255**2 / (100 / 192))) < 1e-6
    cells = {(64, 64): 1, (128, 64): 2, (64, 128): 3, (128, 128): None}
    for use_matplotlib in (True, False):
        path = draw_heatmap(tmp_path / f"h{use_matplotlib}.png", "t", [64, 128], cells, use_matplotlib=use_matplotlib)
        assert Image.open(path).size[0] > 100


@pytest.mark.parametrize("arch, denoiser_millions", [("sd15", 859.5), ("sdxl", 2567.5), ("sd35-medium", 2243.2)])
def test_real_architectures_for_cuda_have_their_published_sizes(arch, denoiser_millions):
    """The CUDA benchmark's SD1.5/SDXL/SD3.5 Medium are the real architectures (built without weights here)."""
    import torch
    from accelerate import init_empty_weights

    from tools.bench.archs import BUILDERS

    with init_empty_weights():
        pipe = BUILDERS[arch]()
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    assert abs(sum(p.numel() for p in denoiser.parameters()) / 1e6 - denoiser_millions) < 0.1
    assert sum(p.numel() for p in pipe.vae.parameters()) / 1e6 > 83  # SD's full-size VAE
    assert pipe.vae_scale_factor == 8
    if arch == "sd35-medium":
        assert pipe.text_encoder_3.config.d_model == 4096 and pipe.text_encoder_3.config.num_layers == 24
    del pipe
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_benchmark_lowvram_sd15(tmp_path):
    """On a GPU: SD1.5 at 512 in the lowest profile stays under 1 GiB allocated (issue 3 target)."""
    from tools.bench.memory import main

    report = tmp_path / "r.json"
    assert main(["--device", "cuda", "--arch", "sd15", "--sizes", "512", "--profiles", "none,lowvram",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--json", str(report)]) == 0
    rows = {r["profile"]: r for r in json.loads(report.read_text())["profiles"]}
    assert rows["lowvram"]["ok"] and rows["lowvram"]["peak_bytes"] <= 1024**3
