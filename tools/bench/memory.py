"""Memory benchmark of Easel's memory profiles.

    python -m tools.bench.memory                         # CPU: bench-sd1 at 1024 and 2048, none vs lowvram
    python -m tools.bench.memory --sizes 512,1024 --profiles none,sliced,vae-tiled,lowvram
    python -m tools.bench.memory --matrix 256,512,1024   # width x height table + heatmap PNG
    python -m tools.bench.memory --fit-budget 1.5GB      # largest square under the budget, per profile
    python -m tools.bench.memory --device cuda --arch sd15 --sizes 512 --matrix 512,1024,2048 --fit-budget 8GB

Every measurement runs in a fresh child process that loads the model through Easel's own
path (``create_context`` + the memory extensions + ``run_generation``), so what is measured
is what the UI does:

* peak memory: CPU - the child's peak RSS (``ru_maxrss``, whole process) and the peak
  during generation alone (``VmHWM`` after resetting it once the model is loaded);
  CUDA - ``torch.cuda.max_memory_allocated`` during generation;
* seconds per step (UNet/transformer denoising steps) and total seconds (incl. VAE decode);
* fidelity: PSNR and max abs difference (8-bit levels) of the image against the ``none``
  profile's image at the same size and seed.

``--fit-budget`` searches, per profile, the largest square side (multiple of 64) that runs
under the budget: on the CPU the parent polls the child's RSS and kills it above the
budget (the child's own ``ru_maxrss`` is checked too, so a short spike is not missed); on
CUDA the child caps itself with ``torch.cuda.set_per_process_memory_fraction``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: Profiles: settings (as a user would set them) on top of the defaults. ``exact`` ones
#: are meant to give the image of ``none`` (float rounding aside).
PROFILES: dict[str, dict[str, Any]] = {
    "none": {"settings": {"vae.tiling": "off"}, "exact": True},
    "sliced": {"settings": {"vae.tiling": "off", "attention.backend": "sliced", "attention.slice_size": "max"},
               "exact": True},
    "vae-sliced": {"settings": {"vae.tiling": "off", "vae.slicing": True}, "exact": True},
    "channels-last": {"settings": {"vae.tiling": "off", "speed.channels_last": True}, "exact": True},
    "vae-tiled": {"settings": {"vae.tiling": "on"}, "exact": False},
    "medvram": {"settings": {"presets.profile": "medvram"}, "exact": False},
    "lowvram": {"settings": {"presets.profile": "lowvram"}, "exact": False},
    "quanto-int8": {"settings": {"vae.tiling": "off", "quantization.method": "quanto-int8"}, "exact": False},
    "fp8-storage": {"settings": {"vae.tiling": "off", "quantization.method": "fp8-storage"}, "exact": False},
    "lowvram+nf4": {"settings": {"presets.profile": "lowvram", "quantization.method": "bnb-nf4",
                                 "quantization.text_encoders": True}, "exact": False},
}


# ----- child: one measurement ----------------------------------------------------------------

def _vm(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Load ``spec['folder']`` with a profile's settings and generate one image; returns the figures."""
    import torch

    from webui.app import AppOptions, create_context
    from webui.generation import run_generation
    from webui.jobs import GenerationRequest, Job

    work = pathlib.Path(spec["work"])
    models = work / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    link = models / "Stable-diffusion" / spec["arch"]
    if not link.exists():
        link.symlink_to(spec["folder"], target_is_directory=True)
    device = spec["device"]
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    options = AppOptions(models_dir=models, outputs_dir=work / "outputs", data_dir=work / f"data-{os.getpid()}",
                         device=device, precision=spec.get("precision", "auto"), entry_points=False,
                         max_side=8192, max_loaded=1, disabled_extensions={"txt2img", "extensions_page"},
                         setting_overrides=dict(PROFILES[spec["profile"]]["settings"]))
    context = create_context(options)
    if device.startswith("cuda") and spec.get("budget"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["budget"] / total))
    started = time.monotonic()
    decodes: list[int] = []  # the batch size of every VAE decoder call (slicing: one call per image)
    with context.pipelines.use(spec["arch"]) as loaded:
        loaded.pipeline.vae.decoder.register_forward_pre_hook(
            lambda module, args: decodes.append(int(args[0].shape[0])))
    load_s = time.monotonic() - started
    rss_loaded = _vm("VmRSS")
    hwm_reset = _reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []

    class TimedJob(Job):
        def step(self, number, preview=None):  # noqa: D401 - Job API
            stamps.append(time.monotonic())
            return super().step(number, preview)

    request = GenerationRequest(model=spec["arch"], prompt="a lighthouse on a cliff at sunset, detailed",
                                negative_prompt="", sampler="Euler", steps=int(spec["steps"]),
                                width=int(spec["size"][0]), height=int(spec["size"][1]), cfg_scale=5.0,
                                seed=int(spec.get("seed", 1234)), batch_size=int(spec.get("batch_size", 1)),
                                save=False)
    started = time.monotonic()
    result = run_generation(context, request, TimedJob())
    total_s = time.monotonic() - started
    figures: dict[str, Any] = {"load_s": round(load_s, 2), "total_s": round(total_s, 3),
                               "rss_loaded": rss_loaded, "vae_decodes": decodes}
    if len(stamps) >= 2:
        figures["s_per_step"] = round((stamps[-1] - stamps[0]) / (len(stamps) - 1), 4)
    elif stamps:
        figures["s_per_step"] = round(stamps[0] - started, 4)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        figures["peak_bytes"] = int(torch.cuda.max_memory_allocated())
    figures["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if hwm_reset:
        figures["peak_rss_generation"] = _vm("VmHWM")
    if not device.startswith("cuda"):
        figures["peak_bytes"] = figures["peak_rss"]
    infotext = result.images[0].infotext
    figures["infotext_profile"] = next((part.split(": ", 1)[1] for part in infotext.split(", ")
                                        if part.startswith("Memory profile: ")), None)
    image_path = work / f"{spec['profile']}-{request.width}x{request.height}-{os.getpid()}.png"
    from PIL import Image

    batch = Image.new("RGB", (request.width * len(result.images), request.height))  # the batch side by side
    for index, record in enumerate(result.images):
        batch.paste(record.image, (index * request.width, 0))
    batch.save(image_path)
    figures["image"] = str(image_path)
    return figures


# ----- parent ----------------------------------------------------------------------------------

def _child_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tools.bench.memory", "--child", json.dumps(spec)]


def measure(spec: dict[str, Any], budget_rss: int | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run one child; ``{"ok": False, "error": ...}`` when it failed or went over ``budget_rss``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    proc = subprocess.Popen(_child_command(spec), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    over = False
    started = time.monotonic()
    if budget_rss:
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
                    rss = next((int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS:")), 0)
            except OSError:
                rss = 0
            if rss > budget_rss:
                over = True
                proc.kill()
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                break
            time.sleep(0.01)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if over:
        return {"ok": False, "error": "over the memory budget"}
    line = next((l for l in reversed(out.splitlines()) if l.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        tail = (err or out).strip().splitlines()[-3:]
        return {"ok": False, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    figures = json.loads(line)
    if budget_rss and figures.get("peak_rss", 0) > budget_rss:
        return {"ok": False, "error": "over the memory budget", **figures}
    figures["ok"] = True
    return figures


def psnr(a_path: str, b_path: str) -> tuple[float, float]:
    """PSNR (dB, inf when identical) and max abs difference in 8-bit levels."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(a_path).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(b_path).convert("RGB"), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    peak = float(np.abs(a - b).max())
    return (math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)), peak


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


def run_profiles(base: dict[str, Any], profiles: list[str], sizes: list[tuple[int, int]],
                 log=print) -> list[dict[str, Any]]:
    """Every profile at every size, with fidelity against ``none``; returns the rows."""
    rows = []
    for size in sizes:
        reference = None
        for profile in (["none"] + [p for p in profiles if p != "none"]):
            figures = measure({**base, "profile": profile, "size": list(size)})
            row = {"profile": profile, "size": f"{size[0]}x{size[1]}", "device": base["device"], **figures}
            if figures.get("ok"):
                if profile == "none":
                    reference = figures["image"]
                elif reference:
                    row["psnr"], row["max_diff"] = psnr(reference, figures["image"])
            rows.append(row)
            log(_format_row(row))
    return rows


HEADER = ("| size | profile | peak GiB | vs none | generation GiB | vs none | s/step | total s | PSNR dB | max diff |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def working_bytes(row: dict[str, Any]) -> int | None:
    """Memory the generation added on top of the loaded model (CPU: peak RSS minus RSS after loading)."""
    if row.get("peak_rss_generation") and row.get("rss_loaded") and row.get("device", "cpu") == "cpu":
        return max(0, row["peak_rss_generation"] - row["rss_loaded"])
    return None


def _format_row(row: dict[str, Any], none_row: dict[str, Any] | None = None) -> str:
    if not row.get("ok"):
        return f"| {row['size']} | {row['profile']} | failed: {row.get('error', '?')} | | | | | | | |"
    ratio = f"{none_row['peak_bytes'] / row['peak_bytes']:.2f}x" if none_row else ""
    work, none_work = working_bytes(row), working_bytes(none_row) if none_row else None
    work_ratio = f"{none_work / work:.1f}x" if work and none_work else ""
    psnr_text = "" if "psnr" not in row else ("inf" if math.isinf(row["psnr"]) else f"{row['psnr']:.1f}")
    return (f"| {row['size']} | {row['profile']} | {_gib(row['peak_bytes'])} | {ratio} | "
            f"{_gib(work) if work is not None else '-'} | {work_ratio} | {row.get('s_per_step', '-')} | "
            f"{row['total_s']} | {psnr_text} | {row.get('max_diff', '')} |")


def profiles_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; ratios are against the ``none`` row of the same size."""
    lines = [HEADER]
    none_rows = {r["size"]: r for r in rows if r["profile"] == "none" and r.get("ok")}
    for row in rows:
        lines.append(_format_row(row, none_rows.get(row["size"]) if row["profile"] != "none" else None))
    return "\n".join(lines)


def run_matrix(base: dict[str, Any], profile: str, sides: list[int], log=print,
               measured: list[dict[str, Any]] | None = None) -> dict[tuple[int, int], Any]:
    """Peak memory (bytes, or None when it failed) for every width x height.

    ``measured``: rows :func:`run_profiles` already measured with the same ``base``; a cell one of
    them covers (same profile and size) takes its figures instead of running that child again.
    """
    known = {(row["profile"], row["size"]): row for row in measured or []}
    cells = {}
    for height in sides:
        for width in sides:
            figures = known.get((profile, f"{width}x{height}")) or measure(
                {**base, "profile": profile, "size": [width, height]})
            cells[(width, height)] = figures.get("peak_bytes") if figures.get("ok") else None
            log(f"matrix {profile} {width}x{height}: "
                f"{_gib(cells[(width, height)]) if cells[(width, height)] else figures.get('error')}")
    return cells


def matrix_table(profile: str, sides: list[int], cells: dict) -> str:
    lines = [f"Peak memory (GiB), profile {profile}: rows = height, columns = width",
             "| h \\ w | " + " | ".join(map(str, sides)) + " |", "|---" * (len(sides) + 1) + "|"]
    for height in sides:
        values = [_gib(cells.get((w, height))) if cells.get((w, height)) else "OOM" for w in sides]
        lines.append(f"| {height} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def draw_heatmap(path: pathlib.Path, title: str, sides: list[int], cells: dict,
                 use_matplotlib: bool = True) -> pathlib.Path:
    """A heatmap PNG (matplotlib when installed, else drawn with Pillow)."""
    values = [v for v in cells.values() if v]
    low, high = (min(values), max(values)) if values else (0, 1)
    try:
        if not use_matplotlib:
            raise ImportError("Pillow drawing asked for")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        grid = np.array([[(cells.get((w, h)) or np.nan) / 1024**3 for w in sides] for h in sides])
        fig, ax = plt.subplots(figsize=(1.2 * len(sides) + 2, 1.0 * len(sides) + 1.5))
        image = ax.imshow(grid, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(sides)), sides)
        ax.set_yticks(range(len(sides)), sides)
        ax.set_xlabel("width")
        ax.set_ylabel("height")
        ax.set_title(title)
        for i, h in enumerate(sides):
            for j, w in enumerate(sides):
                ax.text(j, i, "OOM" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="white")
        fig.colorbar(image, label="peak GiB")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path
    except ImportError:
        pass
    from PIL import Image, ImageDraw

    cell, margin = 90, 70
    n = len(sides)
    img = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black")
    for i, h in enumerate(sides):
        y = margin + (n - 1 - i) * cell  # height grows upwards
        draw.text((10, y + cell // 2 - 6), str(h), fill="black")
        for j, w in enumerate(sides):
            x = margin + j * cell
            value = cells.get((w, h))
            if value:
                t = 0.0 if high == low else (value - low) / (high - low)
                colour = (int(68 + t * (253 - 68)), int(1 + t * (231 - 1)), int(84 + t * (37 - 84)))
                label = f"{value / 1024**3:.2f}"
            else:
                colour, label = (200, 30, 30), "OOM"
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour)
            draw.text((x + 20, y + cell // 2 - 6), label, fill="white" if (not value or t < 0.6) else "black")
    for j, w in enumerate(sides):
        draw.text((margin + j * cell + 25, margin + n * cell + 5), str(w), fill="black")
    draw.text((margin, margin + n * cell + 22), "width ->   (rows: height; GiB peak)", fill="black")
    img.save(path)
    return path


def largest_square(base: dict[str, Any], profile: str, budget: int, low: int, high: int, log=print) -> int | None:
    """Largest side (multiple of 64, in [low, high]) whose run stays under ``budget`` bytes."""
    cuda = base["device"].startswith("cuda")

    def fits(side: int) -> bool:
        spec = {**base, "profile": profile, "size": [side, side], "steps": 1}
        figures = measure({**spec, "budget": budget} if cuda else spec, budget_rss=None if cuda else budget)
        log(f"fit {profile} {side}x{side}: {'fits' if figures.get('ok') else figures.get('error')}")
        return bool(figures.get("ok"))

    lo, hi = low // 64, high // 64
    if not fits(lo * 64):
        return None
    best = lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * 64):
            lo = best = mid
        else:
            hi = mid - 1
    return best * 64


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part:
            w, _, h = part.partition("x")
            out.append((int(w), int(h or w)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--arch", default=None, help="bench-sd1 (CPU default), sd15, sdxl, sd35-medium")
    parser.add_argument("--profiles", default="none,lowvram", help=f"comma list of: {', '.join(PROFILES)}")
    parser.add_argument("--sizes", default="1024,2048", help="sizes for the profile table (W or WxH, comma list)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1, help="images per generation (VAE slicing needs 2+)")
    parser.add_argument("--matrix", default="", help="sides for the width x height matrix, e.g. 256,512,1024,2048")
    parser.add_argument("--matrix-profile", default="none")
    parser.add_argument("--fit-budget", default="", help="memory budget for the largest-square search, e.g. 2GB")
    parser.add_argument("--fit-range", default="256,2048", help="smallest,largest side of the search")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in each child (0: default)")
    parser.add_argument("--cache", type=pathlib.Path, default=ROOT / "data" / "bench-models")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "outputs" / "bench")
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure as JSON here")
    args = parser.parse_args(argv)
    if args.child:
        figures = run_child(json.loads(args.child))
        print(json.dumps(figures), flush=True)
        return 0

    import torch

    from tools.bench.archs import ensure_arch_folder
    from webui.memory import parse_size

    arch = args.arch or ("bench-sd1" if args.device == "cpu" else "sd15")
    dtype = torch.float32 if args.device == "cpu" else (torch.bfloat16 if arch == "sd35-medium" else torch.float16)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = ensure_arch_folder(arch, args.cache, dtype)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-", dir=args.out))
    base = {"arch": arch, "folder": str(folder), "work": str(work), "device": args.device, "steps": args.steps,
            "threads": args.threads or None, "batch_size": args.batch_size}
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else _cpu_name()
    print(f"# Easel memory benchmark: {arch} on {args.device} ({device_name}), {args.steps} steps\n")
    report: dict[str, Any] = {"arch": arch, "device": args.device, "device_name": device_name, "steps": args.steps}
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profiles {unknown}; choose from {', '.join(PROFILES)}")
    if args.sizes:
        rows = run_profiles(base, profiles, _sizes(args.sizes), log=lambda line: None)
        print(profiles_table(rows) + "\n")
        report["profiles"] = rows
    if args.matrix:
        sides = [int(s) for s in args.matrix.split(",") if s.strip()]
        cells = run_matrix(base, args.matrix_profile, sides, log=lambda line: None, measured=report.get("profiles"))
        print(matrix_table(args.matrix_profile, sides, cells) + "\n")
        heatmap = draw_heatmap(args.out / f"heatmap-{arch}-{args.matrix_profile}.png",
                               f"{arch} {args.matrix_profile}: peak GiB ({args.device})", sides, cells)
        print(f"heatmap: {heatmap}\n")
        report["matrix"] = {f"{w}x{h}": v for (w, h), v in cells.items()}
        report["heatmap"] = str(heatmap)
    if args.fit_budget:
        budget = parse_size(args.fit_budget)
        low, high = (int(x) for x in args.fit_range.split(","))
        print(f"Largest square under {args.fit_budget}:")
        report["fit"] = {}
        for profile in profiles:
            side = largest_square(base, profile, budget, low, high, log=lambda line: None)
            report["fit"][profile] = side
            print(f"- {profile}: {side if side else 'none fits'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), "CPU")
    except OSError:
        model = "CPU"
    return f"{model}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
