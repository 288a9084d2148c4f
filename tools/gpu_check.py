"""Run every GPU test on a CUDA machine and write what they measured to docs/benchmarks.md.

    python -m tools.gpu_check                      # install requirements-gpu.txt if missing, run, write
    python -m tools.gpu_check --no-install         # use what is installed
    python -m tools.gpu_check --wheels wheels/     # install from local wheel files only (no index)
    python -m tools.gpu_check --mutations          # also the CUDA rows of tools.mutation_check
    python -m tools.gpu_check --no-write -- -k offload   # arguments after -- go to pytest

Steps: (1) refuse to run without CUDA; (2) install what ``requirements-gpu.txt`` lists and is
missing (bitsandbytes, xformers) the way ``launch.py`` installs, keeping the installed torch
and its CUDA libraries as they are; a failed install is reported and the tests that need the
package then skip with the reason; (3) ``pytest -m gpu``, with ``EASEL_TEST_FIGURES`` naming a
file the tests' ``record_figures`` fixture appends to; (4) append a dated section naming the
device, the versions, each test's outcome (skip reasons included) and the figures to
``docs/benchmarks.md``; (5) with ``--mutations``, break each CUDA-only feature as the CUDA rows
of :mod:`tools.mutation_check` say and record whether its tests caught it. Exits with pytest's
status (2 without CUDA; 1 when a mutation was not caught).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_REQUIREMENTS = ROOT / "requirements-gpu.txt"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
FIGURES_ENV = "EASEL_TEST_FIGURES"  # tests/conftest.py's record_figures writes here


def install_gpu_requirements(wheels: Path | None) -> str | None:
    """Install what requirements-gpu.txt lists and is missing; None when it worked, else why not."""
    sys.path.insert(0, str(ROOT))
    from launch import install_requirements

    saved = {key: os.environ.get(key) for key in ("PIP_FIND_LINKS", "PIP_NO_INDEX")}
    if wheels is not None:
        os.environ["PIP_FIND_LINKS"] = str(wheels.resolve())
        os.environ["PIP_NO_INDEX"] = "1"
    try:
        install_requirements([GPU_REQUIREMENTS])
    except subprocess.CalledProcessError as exc:
        return f"pip failed (exit {exc.returncode}); the tests that need these packages skip"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_line() -> str:
    """``NVIDIA H200 (139.8 GiB), torch 2.x (CUDA 12.x), bitsandbytes ..., xformers ..., diffusers ...``"""
    import torch

    properties = torch.cuda.get_device_properties(0)
    return (f"{properties.name} ({properties.total_memory / 2**30:.1f} GiB, {torch.cuda.device_count()} device(s)), "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}), bitsandbytes {package_version('bitsandbytes')}, "
            f"xformers {package_version('xformers')}, diffusers {package_version('diffusers')}")


def test_outcomes(junit: Path) -> list[tuple[str, str, str]]:
    """(test id, outcome, detail) for every test case of a pytest JUnit XML report."""
    if not junit.is_file():
        return []
    rows = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                detail = (element.get("message") or "").splitlines()[0][:160] if element.get("message") else ""
                break
        rows.append((test, outcome, detail))
    return rows


def read_figures(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def figure_tables(figures: list[dict]) -> list[str]:
    """Markdown tables of the recorded figures: one table per set of figure names."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in figures:
        keys = tuple(key for key in row if key not in ("test", "name"))
        groups.setdefault(keys, []).append(row)
    lines: list[str] = []
    for keys, rows in groups.items():
        lines += ["", "| test | name | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for row in rows:
            short = row["test"].split("::", 1)[-1]
            lines.append(f"| {short} | {row['name']} | " + " | ".join(str(row.get(key, "")) for key in keys) + " |")
    return lines


def cuda_mutations(timeout: float) -> list[tuple[str, str, float]]:
    """(row name, status, seconds) of every CUDA row of tools.mutation_check, run on a scratch copy."""
    from tools import mutation_check

    rows = [row for row in mutation_check.MUTATIONS if row.needs_cuda]
    results = []
    with tempfile.TemporaryDirectory(prefix="easel-gpu-mutation-") as folder:
        mutation_check.scratch_copy(ROOT, Path(folder))
        for row in rows:
            outcome = mutation_check.check(row, Path(folder), timeout, baseline=False, has_cuda=True)
            print(f"gpu_check: mutation {row.name}: {outcome.status} ({outcome.seconds:.0f} s)", flush=True)
            results.append((row.name, outcome.status, outcome.seconds))
    return results


def section(when: datetime.datetime, device: str, install_note: str | None, code: int, seconds: float,
            outcomes: list[tuple[str, str, str]], figures: list[dict], pytest_args: list[str],
            mutations: list[tuple[str, str, float]] | None = None) -> str:
    counts = {name: sum(outcome == name for _, outcome, _ in outcomes) for name in ("passed", "FAILED", "ERROR",
                                                                                   "skipped")}
    command = "python -m tools.gpu_check" + (" -- " + " ".join(pytest_args) if pytest_args else "")
    lines = [f"## GPU check, {when:%Y-%m-%d %H:%M} UTC", "", f"Device: {device}.", "",
             f"`{command}`: {counts['passed']} passed, {counts['FAILED']} failed, {counts['ERROR']} errors, "
             f"{counts['skipped']} skipped in {seconds:.0f} s (pytest exit {code})."]
    if install_note:
        lines += ["", f"Installing requirements-gpu.txt: {install_note}."]
    lines += ["", "| test | outcome | detail |", "|---|---|---|"]
    lines += [f"| {test} | {outcome} | {detail.replace('|', '/')} |" for test, outcome, detail in outcomes]
    if figures:
        lines += ["", "Figures the tests measured (MiB from torch.cuda.memory_allocated / max_memory_allocated):"]
        lines += figure_tables(figures)
    if mutations:
        lines += ["", "CUDA rows of `python -m tools.mutation_check` (each feature broken on purpose):", "",
                  "| row | result | seconds |", "|---|---|---|"]
        lines += [f"| {name} | {status} | {seconds:.0f} |" for name, status, seconds in mutations]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-install", action="store_true", help="do not install requirements-gpu.txt")
    parser.add_argument("--wheels", type=Path, help="install from the wheel files in this folder only")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of appending it")
    parser.add_argument("--out", type=Path, default=BENCHMARKS, help="the Markdown file to append to")
    parser.add_argument("--mutations", action="store_true", help="also run the CUDA rows of tools.mutation_check")
    args = parser.parse_args(own)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; the GPU tests would all skip. Run it on a GPU machine.")
        return 2
    install_note = None if args.no_install else install_gpu_requirements(args.wheels)
    if install_note:
        print(f"gpu_check: {install_note}", flush=True)
    when = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="easel-gpu-check-") as folder:
        figures_path, junit = Path(folder) / "figures.jsonl", Path(folder) / "junit.xml"
        env = dict(os.environ, **{FIGURES_ENV: str(figures_path)})
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-rs", "-q",
                   f"--junitxml={junit}", *pytest_args]
        started = time.monotonic()
        code = subprocess.call(command, cwd=ROOT, env=env)
        seconds = time.monotonic() - started
        outcomes, figures = test_outcomes(junit), read_figures(figures_path)
    mutations = cuda_mutations(timeout=600) if args.mutations else None
    if mutations and any(status != "caught" for _, status, _ in mutations):
        code = code or 1
    text = section(when, device_line(), install_note, code, seconds, outcomes, figures, pytest_args, mutations)
    if args.no_write:
        print(text)
    else:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
        print(f"gpu_check: appended the results to {args.out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
