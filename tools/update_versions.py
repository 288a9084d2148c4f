"""Move the tested set of versions forward, deliberately.

    python -m tools.update_versions                 # newest versions, whole suite
    python -m tools.update_versions -- -k lora      # arguments after -- go to pytest
    python -m tools.update_versions --keep-venv     # leave the throwaway venv for a look

Makes a throwaway virtual environment, installs the newest versions that
``requirements.txt`` and ``requirements-test.txt`` allow (no constraints: that is the point),
runs the test suite there, and only when it passes rewrites ``requirements-versions.txt``
with the exact versions of that environment. When tests fail, it prints which ones and
what moved, and leaves the file as it is. The venv is deleted either way unless
``--keep-venv``.

pip's cache is used as usual, so a second run installs from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import launch  # noqa: E402  (standard library only)

SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12")
# Left out of the tested set: the installer itself.
NOT_PINNED = {"pip"}

_LIST_DISTRIBUTIONS = """
import json
from importlib import metadata
print(json.dumps(sorted(
    [d.metadata["Name"], d.version, d.metadata.get("Requires-Python") or ""] for d in metadata.distributions()
)))
"""


def python_marker(requires_python: str, supported: tuple[str, ...] = SUPPORTED_PYTHONS) -> str:
    """An environment marker for a release's ``Requires-Python``, or "" when every supported Python may use it.

    Only the bounds (``>=``, ``>``, ``<``, ``<=``) are carried over; ``!=`` exclusions of
    single patch releases are left to pip.
    """
    from packaging.specifiers import SpecifierSet

    if not requires_python.strip():
        return ""
    specifiers = SpecifierSet(requires_python)
    if all(specifiers.contains(f"{version}.0") or specifiers.contains(f"{version}.99") for version in supported):
        return ""
    clauses = [f'python_full_version {spec.operator} "{spec.version}"' for spec in specifiers
               if spec.operator in (">=", ">", "<", "<=")]
    return " and ".join(sorted(clauses))


def constraints_text(distributions: list[list[str]], python_version: str, platform: str) -> str:
    """The constraints file for ``[name, version, requires_python]`` rows of a tested environment."""
    lines = [
        "# The exact versions Easel's whole test suite passed with (pip constraints, used by launch.py).",
        "# requirements.txt keeps the ranges Easel works with; this file is what a user gets.",
        f"# Tested on CPython {python_version}, {platform}. Do not edit by hand: regenerate with",
        "#   python -m tools.update_versions",
        "# which installs the newest versions in a throwaway venv and rewrites this file only when the tests pass.",
    ]
    rows = {}
    for name, version, requires_python in distributions:
        key = launch.canonical_name(name)
        if key in NOT_PINNED:
            continue
        rows[key] = (version, requires_python)
    for key in sorted(rows):
        version, requires_python = rows[key]
        marker = python_marker(requires_python)
        lines.append(f"{key}=={version}" + (f"; {marker}" if marker else ""))
    return "\n".join(lines) + "\n"


def version_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """``name old -> new`` for every package whose version moved (added and removed ones too)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key} {old.get(key, '-')} -> {new.get(key, '-')}")
    return changes


def _run(command: list[str], **kwargs) -> int:
    print("[update] " + " ".join(command), flush=True)
    return subprocess.call(command, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m tools.update_versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the throwaway venv")
    parser.add_argument("--keep-venv", action="store_true", help="do not delete the venv afterwards")
    parser.add_argument("--output", type=Path, default=launch.TESTED_VERSIONS, help="the constraints file to rewrite")
    parser.add_argument("--requirements", type=Path, action="append",
                        help="a requirements file to install (may be repeated; default: requirements.txt, "
                             "requirements-test.txt and requirements-ray.txt)")
    parser.add_argument("--no-deps", action="append", metavar="REQUIREMENT",
                        help="a package installed without its dependencies (\"\" for none; default: "
                             f"{', '.join(launch.NO_DEPS_TEST_PACKAGES)})")
    args = parser.parse_args(argv)
    requirement_files = args.requirements or [launch.REQUIREMENTS, launch.TEST_REQUIREMENTS, launch.RAY_REQUIREMENTS]
    no_deps = [item for item in (launch.NO_DEPS_TEST_PACKAGES if args.no_deps is None else args.no_deps) if item]

    work = Path(tempfile.mkdtemp(prefix="easel-update-versions-"))
    venv = work / "venv"
    python = venv / "bin" / "python"
    try:
        if _run([args.python, "-m", "venv", str(venv)]) != 0:
            print("[update] could not create the venv", file=sys.stderr)
            return 2
        install = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        for path in requirement_files:
            install += ["-r", str(path)]
        if _run(install) != 0 or (no_deps and _run([str(python), "-m", "pip", "install",
                                                    "--disable-pip-version-check", "--no-deps", *no_deps]) != 0):
            print("[update] installing the newest versions failed; requirements-versions.txt is unchanged",
                  file=sys.stderr)
            return 1
        listing = subprocess.run([str(python), "-c", _LIST_DISTRIBUTIONS], check=True, capture_output=True,
                                 text=True).stdout
        distributions = json.loads(listing)
        new = {launch.canonical_name(n): v for n, v, _ in distributions if launch.canonical_name(n) not in NOT_PINNED}
        old = launch.tested_versions(args.output)
        changes = version_changes(old, new)
        print("[update] versions that move: " + ("; ".join(changes) if changes else "none"), flush=True)

        log = work / "pytest.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(log, "w", encoding="utf-8") as handle:
            process = subprocess.Popen([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
                                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                handle.write(line)
                sys.stdout.write(line)
            code = process.wait()
        if code != 0:
            failed = [line.strip() for line in log.read_text(encoding="utf-8").splitlines()
                      if line.startswith(("FAILED ", "ERROR "))]
            print(f"[update] the tests failed on the newest versions (pytest exit {code}); "
                  f"{args.output.name} is unchanged.", file=sys.stderr)
            for line in failed:
                print(f"[update]   {line}", file=sys.stderr)
            return 1
        version = subprocess.run([str(python), "-c", "import platform; print(platform.python_version(), "
                                  "platform.machine())"], check=True, capture_output=True, text=True).stdout.split()
        args.output.write_text(constraints_text(distributions, version[0], f"Linux {version[1]}"), encoding="utf-8")
        print(f"[update] the tests passed; wrote {args.output} ({len(new)} packages)", flush=True)
        return 0
    finally:
        if args.keep_venv:
            print(f"[update] venv kept at {venv}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
