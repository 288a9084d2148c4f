#!/usr/bin/env python3
"""Start Easel: install what is missing, then serve the UI (or run the test suite).

    python launch.py            # set up on first run, then http://127.0.0.1:7860
    python launch.py --test     # set up, then run the whole test suite

What is missing is installed at the versions the test suite passed with
(``requirements-versions.txt``, used as pip constraints); ``requirements.txt`` keeps the
ranges Easel works with. An installed package within its range but at another version is
kept, and start-up says so in one line. Set-up never replaces an installed PyTorch (a CUDA
build on Colab stays as it is): installed torch packages, and what they depend on, are
pinned to their installed versions while pip runs. Where the interpreter is externally
managed (PEP 668), a ``.venv`` is made beside this file (seeing the system's packages, so a
system torch is reused) and Easel re-starts inside it.

Only the standard library is used until the requirements are in place.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements.txt"
TEST_REQUIREMENTS = ROOT / "requirements-test.txt"
# The Ray Serve backend's own requirements (--backend ray, and the test suite's Ray tests).
RAY_REQUIREMENTS = ROOT / "requirements-ray.txt"
# Exact versions of everything the test suite last passed with (pip constraints); rewritten
# only by `python -m tools.update_versions` after the suite passes on the newest versions.
TESTED_VERSIONS = ROOT / "requirements-versions.txt"
VENV_DIR = ROOT / ".venv"
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
# Installed without their own pins (groundingdino-py pins supervision and opencv-python, which
# clash with opencv-python-headless); what they really need is in requirements-test.txt.
NO_DEPS_TEST_PACKAGES = ("groundingdino-py==0.4.0",)
BROWSER = "/usr/bin/chromium"
# --no-compile: pip would byte-compile every installed module (about 18,000 files, over a minute
# of one core in a fresh environment); Python compiles the modules Easel imports on first use
# and caches them beside the sources as usual.
PIP_OPTIONS = ("--disable-pip-version-check", "--no-compile")


def image_side_limit(text: str) -> int:
    """``--max-size``: a multiple of 8 (the latents' factor) from 128 to 16384, else a clear refusal."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if not 128 <= value <= 16384 or value % 8:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of 8 from 128 to 16384")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Easel: a Stable Diffusion web UI on diffusers. Installs what is missing, then serves the UI.",
    )
    parser.add_argument("--listen", action="store_true",
                        help="serve on all network interfaces (0.0.0.0) instead of 127.0.0.1 only")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live share link")
    parser.add_argument("--gradio-auth", "--auth", dest="gradio_auth", metavar="USER:PASSWORD[,USER2:PASSWORD2]",
                        help="require this login for the UI (recommended with --listen/--share)")
    parser.add_argument("--gradio-auth-path", metavar="FILE", help="read UI logins (USER:PASSWORD, one or more per "
                                                                   "line, commas between them) from this file")
    parser.add_argument("--api", action="store_true",
                        help="also serve the REST API: AUTOMATIC1111's /sdapi/v1 and Easel's /easel/v1 (docs at /docs)")
    parser.add_argument("--nowebui", action="store_true", help="serve the REST API alone, without the UI")
    parser.add_argument("--api-auth", metavar="USER:PASSWORD[,USER2:PASSWORD2]",
                        help="require HTTP Basic credentials on every API route")
    parser.add_argument("--api-auth-path", metavar="FILE", help="read API credentials from this file")
    parser.add_argument("--api-max-body-mb", type=int, default=64, metavar="MIB",
                        help="largest API request body accepted, in MiB (default 64); larger ones get 413")
    parser.add_argument("--model", help="model to select at start: a built-in (tiny), a file or folder name under "
                                        "models/Stable-diffusion, or a hub id")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="models folder (A1111 layout)")
    parser.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs", help="where images are saved")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data", help="settings and caches")
    parser.add_argument("--extensions-dir", type=Path, action="append", default=[],
                        help="an extra folder of drop-in extensions (may be repeated)")
    parser.add_argument("--disable-extension", action="append", default=[], metavar="NAME",
                        help="do not load this extension (may be repeated)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="weights dtype (auto: fp16/bf16 on GPUs, fp32 on the CPU)")
    parser.add_argument("--max-size", type=image_side_limit, default=2048,
                        help="largest image side allowed: a multiple of 8 from 128 to 16384 (default 2048)")
    parser.add_argument("--medvram", action="store_true",
                        help="memory preset as in AUTOMATIC1111: model CPU offload (GPU), sliced attention, "
                             "VAE slicing and tiling above the threshold")
    parser.add_argument("--lowvram", action="store_true",
                        help="lowest-memory preset: sequential offload (GPU), maximal attention slicing, "
                             "VAE slicing and tiling at every size")
    parser.add_argument("--vram-budget", metavar="SIZE",
                        help="GPU memory Easel may use (e.g. 6GB); offload 'auto' picks the mode that fits")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also list and load .ckpt/.pt pickle checkpoints (they can run arbitrary code)")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="let the Models page download while serving beyond localhost without --auth")
    parser.add_argument("--allow-lan-downloads", action="store_true",
                        help="let the Models page download from private/LAN addresses and plain http:// URLs "
                             "(refused by default when serving beyond localhost)")
    parser.add_argument("--allow-extension-install", action="store_true",
                        help="offer the Extensions page's 'Install requirements' button even when serving beyond "
                             "this machine (it is offered on 127.0.0.1 only by default)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="where image jobs run: local (this process, the default) or ray (Ray Serve workers, "
                             "one per GPU; installs requirements-ray.txt)")
    parser.add_argument("--ray-address", default="local", metavar="local|auto|HOST:PORT",
                        help="with --backend ray: start a private cluster on 127.0.0.1 (local, the default), join "
                             "the cluster `ray start` made on this machine (auto) or the one at HOST:PORT "
                             "(set RAY_AUTH_MODE=token and the cluster's token first)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="with --backend ray: how many workers (Serve replicas; one GPU each where there are GPUs)")
    parser.add_argument("--skip-install", action="store_true", help="do not check or install requirements")
    parser.add_argument("--test", action="store_true",
                        help="set up, then run the test suite; arguments after -- go to pytest")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    return parser.parse_args(argv), extra


# ----- set-up (standard library only) ---------------------------------------------------

def _in_venv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _externally_managed() -> bool:
    if _in_venv():
        return False
    marker = Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
    return marker.exists()


def _venv_python() -> Path:
    return VENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_usable_interpreter() -> None:
    """Re-run inside ``.venv`` where pip may not install into this interpreter (PEP 668)."""
    if not _externally_managed():
        return
    python = _venv_python()
    if not python.exists():
        print(f"[easel] {sys.executable} is externally managed; creating {VENV_DIR}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", "--system-site-packages", str(VENV_DIR)])
    print(f"[easel] continuing with {python}", flush=True)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _requirement_class():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a fresh interpreter: pip always vendors packaging
        from pip._vendor.packaging.requirements import Requirement  # type: ignore
    return Requirement


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Pillow`` -> ``pillow``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _unsatisfied(requirements: list[str]) -> list[str]:
    """The requirement lines not met by what is installed (checked with pip's own parser)."""
    Requirement = _requirement_class()
    missing = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = _installed_version(requirement.name)
        if version is None or (requirement.specifier and
                               not requirement.specifier.contains(version, prereleases=True)):
            missing.append(line)
    return missing


def tested_versions(path: Path | None = None) -> dict[str, str]:
    """``{canonical name: version}`` of the tested set (default ``TESTED_VERSIONS``) for this interpreter."""
    path = path or TESTED_VERSIONS
    if not path.exists():
        return {}
    Requirement = _requirement_class()
    pins = {}
    for line in _requirement_lines(path):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        exact = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if exact:
            pins[canonical_name(requirement.name)] = exact[0]
    return pins


def installed_torch_family() -> dict[str, str]:
    """The installed torch packages and everything they depend on: ``{canonical name: version}``.

    These stay exactly as installed (Colab's CUDA torch brings its own CUDA libraries,
    sympy, triton, ...): pinning one of them to another version would make pip replace torch.
    """
    from importlib import metadata

    Requirement = _requirement_class()
    family: dict[str, str] = {}
    pending = [name for name in TORCH_PACKAGES if _installed_version(name) is not None]
    while pending:
        name = pending.pop()
        key = canonical_name(name)
        if key in family:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        family[key] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            pending.append(requirement.name)
    return family


def constraint_lines(kept: dict[str, str] | None = None) -> list[str]:
    """The pip constraints for an install: the tested set, with an installed torch (``kept``,
    default :func:`installed_torch_family`) kept as it is."""
    kept = installed_torch_family() if kept is None else kept
    lines = [f"{name}=={version}" for name, version in tested_versions().items() if name not in kept]
    lines += [f"{name}=={version}" for name, version in sorted(kept.items())]
    return lines


def untested_installed(requirements: list[str]) -> list[str]:
    """``name installed (tested X)`` for each requirement installed at a version other than the tested one.

    An installed torch is left out: keeping it (Colab's CUDA build) is deliberate.
    """
    Requirement = _requirement_class()
    pins = tested_versions()
    kept = installed_torch_family()
    differing = []
    for line in requirements:
        requirement = Requirement(line)
        key = canonical_name(requirement.name)
        version = _installed_version(requirement.name)
        if key in kept or key not in pins or version is None or version == pins[key]:
            continue
        differing.append(f"{requirement.name} {version} (tested {pins[key]})")
    return differing


def install_requirements(files: list[Path]) -> None:
    """pip-install whatever in ``files`` is missing, at the tested versions, never replacing an installed torch."""
    lines = [line for path in files for line in _requirement_lines(path)]
    missing = _unsatisfied(lines)
    if missing:
        print(f"[easel] installing: {', '.join(missing)}", flush=True)
        command = [sys.executable, "-m", "pip", "install", *PIP_OPTIONS]
        for path in files:
            command += ["-r", str(path)]
        kept = installed_torch_family()
        if kept:
            print(f"[easel] keeping the installed {', '.join(f'{n}=={kept[n]}' for n in TORCH_PACKAGES if n in kept)}",
                  flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("\n".join(constraint_lines(kept)) + "\n", encoding="utf-8")
            subprocess.check_call(command + ["-c", str(constraints)])
    differing = untested_installed(lines)
    if differing:
        print(f"[easel] not the tested versions: {', '.join(differing)}; to install the tested ones: "
              f"{Path(sys.executable).name} -m pip install -c {TESTED_VERSIONS.name} "
              f"{' '.join('-r ' + path.name for path in files)}", flush=True)


def requirement_files(args: argparse.Namespace) -> list[Path]:
    """What this run needs: requirements.txt; the test suite's own for ``--test``; Ray Serve's
    (``requirements-ray.txt``) only for ``--backend ray`` and the test suite (its Ray tests)."""
    files = [REQUIREMENTS]
    if args.test:
        files.append(TEST_REQUIREMENTS)
    if args.test or args.backend == "ray":
        files.append(RAY_REQUIREMENTS)
    return files


def install_without_dependencies(requirements: list[str]) -> None:
    """pip-install packages whose declared dependencies must not be pulled in."""
    missing = _unsatisfied(requirements)
    if missing:
        print(f"[easel] installing without dependencies: {', '.join(missing)}", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", *PIP_OPTIONS, "--no-deps", *missing])


def ensure_browser() -> None:
    """Debian's chromium for the browser tests (never a downloaded browser build)."""
    if Path(BROWSER).exists():
        return
    apt = shutil.which("apt-get")
    if apt is None or (hasattr(os, "geteuid") and os.geteuid() != 0):
        print("[easel] chromium is not installed and cannot be installed here; browser tests will skip", flush=True)
        return
    print("[easel] installing Debian's chromium for the browser tests", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.call([apt, "-qq", "update"], env=env, stdout=subprocess.DEVNULL)
    subprocess.check_call([apt, "-qq", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                          stdout=subprocess.DEVNULL)


# ----- running ---------------------------------------------------------------------------

def run_tests(pytest_args: list[str]) -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "pytest", "-q", *pytest_args]
    print(f"[easel] {' '.join(command)}", flush=True)
    return subprocess.call(command, cwd=ROOT, env=env)


def serve(args: argparse.Namespace) -> None:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    from webui.server import serve_app

    serve_app(args)


def main(argv: list[str] | None = None) -> int:
    # Before anything can import torch (set-up below never does; serving does).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    args, extra = parse_args(argv)
    if not args.skip_install:
        ensure_usable_interpreter()
        files = requirement_files(args)
        install_requirements(files)
        if args.test:
            install_without_dependencies(list(NO_DEPS_TEST_PACKAGES))
            ensure_browser()
    if args.test:
        return run_tests(extra)
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
