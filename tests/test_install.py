"""Installs: the tested set of versions (requirements-versions.txt) and how launch.py uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import launch
from tools import update_versions

ROOT = Path(__file__).resolve().parent.parent


def _requirements(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in launch._requirement_lines(path)]


def test_every_requirement_has_a_tested_exact_version_inside_its_range():
    pins = launch.tested_versions()
    assert pins, "requirements-versions.txt is missing or pins nothing for this Python"
    requirements = (_requirements(launch.REQUIREMENTS) + _requirements(launch.TEST_REQUIREMENTS)
                    + _requirements(launch.RAY_REQUIREMENTS) + [Requirement(line) for line in launch.NO_DEPS_TEST_PACKAGES])
    problems = []
    for requirement in requirements:
        key = launch.canonical_name(requirement.name)
        if key not in pins:
            problems.append(f"{requirement.name}: no exact version in requirements-versions.txt")
        elif not requirement.specifier.contains(pins[key], prereleases=True):
            problems.append(f"{requirement.name}: tested {pins[key]} is outside {requirement.specifier}")
    assert not problems, "\n".join(problems)


def test_the_tested_set_is_exact_and_names_each_package_once():
    lines = launch._requirement_lines(launch.TESTED_VERSIONS)
    names = [launch.canonical_name(Requirement(line).name) for line in lines]
    assert len(names) == len(set(names)), "a package is pinned twice"
    for line in lines:
        requirement = Requirement(line)
        assert [spec.operator for spec in requirement.specifier] == ["=="], line


def test_what_runs_these_tests_is_the_tested_set_when_ci_installed_it():
    """In CI (a fresh venv filled by launch.py) every pinned package installed is at its pin."""
    if not launch._in_venv():
        pytest.skip("not inside a virtual environment: the packages may be the machine's own")
    kept = launch.installed_torch_family()
    differing = []
    for key, version in launch.tested_versions().items():
        try:
            installed = metadata.version(key)
        except metadata.PackageNotFoundError:
            continue
        if key not in kept and installed != version:
            differing.append(f"{key} {installed} (tested {version})")
    if differing and not os.environ.get("CI"):
        pytest.skip("a developer's venv may hold other versions: " + ", ".join(differing))
    assert not differing


def test_an_installed_torch_and_everything_it_needs_stay_as_they_are(monkeypatch, tmp_path):
    pins = tmp_path / "versions.txt"
    pins.write_text("torch==9.9.9\nsympy==0.0.1\npluggy==1.0.0\n", encoding="utf-8")
    monkeypatch.setattr(launch, "TESTED_VERSIONS", pins)
    monkeypatch.setattr(launch, "installed_torch_family", lambda: {"torch": "2.9.0+cu126", "sympy": "1.13.1"})
    lines = launch.constraint_lines()
    assert "torch==2.9.0+cu126" in lines and "sympy==1.13.1" in lines and "pluggy==1.0.0" in lines
    assert "torch==9.9.9" not in lines and "sympy==0.0.1" not in lines


def test_the_torch_family_holds_what_the_installed_torch_requires():
    family = launch.installed_torch_family()
    if "torch" not in family:
        pytest.skip("torch is not installed")
    for line in metadata.distribution("torch").requires or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        assert launch.canonical_name(requirement.name) in family, requirement.name


def test_start_up_says_in_one_line_what_is_not_the_tested_version(monkeypatch, tmp_path, capsys):
    installed = metadata.version("pluggy")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pluggy>=0.1\n", encoding="utf-8")
    pins = tmp_path / "versions.txt"
    pins.write_text("pluggy==0.0.1\n", encoding="utf-8")
    monkeypatch.setattr(launch, "TESTED_VERSIONS", pins)
    monkeypatch.setattr(launch.subprocess, "check_call", lambda *a, **k: pytest.fail("nothing is missing"))
    launch.install_requirements([requirements])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    assert f"not the tested versions: pluggy {installed} (tested 0.0.1)" in lines[0]
    assert "-c versions.txt" in lines[0]

    pins.write_text(f"pluggy=={installed}\n", encoding="utf-8")
    launch.install_requirements([requirements])
    assert capsys.readouterr().out == ""


def test_a_missing_package_is_installed_with_the_tested_versions_as_constraints(monkeypatch, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pluggy>=0.1\nsurely-not-installed-easel-package>=1\n", encoding="utf-8")
    pins = tmp_path / "versions.txt"
    pins.write_text(f"pluggy=={metadata.version('pluggy')}\nsurely-not-installed-easel-package==1.2.3\n",
                    encoding="utf-8")
    monkeypatch.setattr(launch, "TESTED_VERSIONS", pins)
    monkeypatch.setattr(launch, "installed_torch_family", lambda: {"torch": "2.9.0+cu126"})
    calls = []

    def fake_pip(command):
        constraints = Path(command[command.index("-c") + 1]).read_text(encoding="utf-8").split()
        calls.append((command, constraints))

    monkeypatch.setattr(launch.subprocess, "check_call", fake_pip)
    launch.install_requirements([requirements])
    (command, constraints), = calls
    assert command[command.index("-r") + 1] == str(requirements)
    assert "surely-not-installed-easel-package==1.2.3" in constraints
    assert "torch==2.9.0+cu126" in constraints


def test_ray_serve_is_installed_only_for_the_ray_backend_and_the_test_suite():
    def files(*argv):
        return launch.requirement_files(launch.parse_args(list(argv))[0])

    assert files() == [launch.REQUIREMENTS]
    assert files("--backend", "local") == [launch.REQUIREMENTS]
    assert files("--backend", "ray", "--workers", "2") == [launch.REQUIREMENTS, launch.RAY_REQUIREMENTS]
    assert files("--test") == [launch.REQUIREMENTS, launch.TEST_REQUIREMENTS, launch.RAY_REQUIREMENTS]
    assert [line.split(">")[0] for line in launch._requirement_lines(launch.RAY_REQUIREMENTS)] == ["ray[serve]"]


@pytest.mark.parametrize("requires_python, marker", [
    ("", ""),
    (">=3.8", ""),
    (">=3.10,<3.15", ""),
    (">=3.11", 'python_full_version >= "3.11"'),
    ("!=3.14.1,>=3.11", 'python_full_version >= "3.11"'),
    (">=3.9,<3.12", 'python_full_version < "3.12" and python_full_version >= "3.9"'),
])
def test_a_pin_carries_the_pythons_its_release_supports(requires_python, marker):
    assert update_versions.python_marker(requires_python) == marker


def test_the_constraints_file_is_written_sorted_canonical_and_without_pip():
    text = update_versions.constraints_text(
        [["Pillow", "12.0.0", ">=3.10"], ["pip", "25.0", ""], ["numpy", "2.4.6", ">=3.11"]], "3.11.7", "Linux x86_64")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["numpy==2.4.6; python_full_version >= \"3.11\"", "pillow==12.0.0"]
    assert "CPython 3.11.7, Linux x86_64" in text


def test_version_changes_lists_moved_added_and_removed_packages():
    assert update_versions.version_changes({"a": "1", "b": "1", "c": "1"}, {"a": "1", "b": "2", "d": "1"}) == [
        "b 1 -> 2", "c 1 -> -", "d - -> 1"]


@pytest.mark.slow
@pytest.mark.parametrize("passing", [True, False])
def test_update_versions_rewrites_the_file_only_when_the_tests_pass(tmp_path, passing):
    """The real command in a real throwaway venv, on a one-package requirements file."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("iniconfig>=1\npytest>=8\n", encoding="utf-8")
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "test_one.py").write_text(f"def test_it():\n    assert {passing}\n", encoding="utf-8")
    output = tmp_path / "versions.txt"
    output.write_text("# before\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "tools.update_versions", "--requirements", str(requirements),
                          "--no-deps", "", "--output", str(output), "--", str(tests)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    if passing:
        assert run.returncode == 0, run.stdout + run.stderr
        pins = launch.tested_versions(output)
        assert {"iniconfig", "pytest", "pluggy"} <= set(pins)
        assert "pip" not in pins
        assert "1 passed" in run.stdout
    else:
        assert run.returncode == 1
        assert output.read_text(encoding="utf-8") == "# before\n"
        assert "FAILED" in run.stderr and "test_one.py::test_it" in run.stderr
