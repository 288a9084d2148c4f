"""The maintenance tools: the mutation check tells caught, not caught and stale rows apart on a toy
project; the GPU check turns a pytest report and recorded figures into a benchmarks section."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tools import gpu_check, mutation_check
from tools.mutation_check import Mutation


@pytest.fixture
def toy_project(tmp_path):
    """A git repository with one function and one test that guards it."""
    root = tmp_path / "toy"
    (root / "tests").mkdir(parents=True)
    (root / "adder.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "tests" / "test_adder.py").write_text(textwrap.dedent("""
        from adder import add

        def test_add():
            assert add(2, 3) == 5

        def test_runs_but_checks_nothing():
            add(2, 3)
    """))
    (root / "notes.txt").write_text("ignored\n")
    (root / ".gitignore").write_text("notes.txt\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "adder.py", ".gitignore"], cwd=root, check=True)  # the test file: new, untracked
    return root


def test_the_mutation_check_reports_caught_not_caught_and_stale(toy_project, tmp_path):
    scratch = tmp_path / "scratch"
    mutation_check.scratch_copy(toy_project, scratch)
    assert sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file()) == [
        ".gitignore", "adder.py", "tests/test_adder.py"]  # tracked and new files, not ignored ones

    def row(tests, old="    return a + b\n"):
        return Mutation(name="minus", what="adds by subtracting", file="adder.py", old=old,
                        new="    return a - b\n", tests=tests)

    caught = mutation_check.check(row(("tests/test_adder.py::test_add",)), scratch, 120, False, False)
    assert caught.status == "caught", caught
    missed = mutation_check.check(row(("tests/test_adder.py::test_runs_but_checks_nothing",)), scratch, 120,
                                  True, False)
    assert missed.status == "NOT CAUGHT" and not missed.ok, missed
    stale = mutation_check.check(row(("tests/test_adder.py",), old="return a * b"), scratch, 120, False, False)
    assert stale.status == "stale snippet" and "0 times" in stale.detail
    wrong_id = mutation_check.check(row(("tests/test_adder.py::no_such_test",)), scratch, 120, False, False)
    assert wrong_id.status == "error", wrong_id
    gpu_row = Mutation("gpu", "x", "adder.py", "    return a + b\n", "", ("tests",), needs_cuda=True)
    assert mutation_check.check(gpu_row, scratch, 120, False, has_cuda=False).status == "skipped"
    assert (scratch / "adder.py").read_text() == "def add(a, b):\n    return a + b\n"  # put back every time


def test_every_mutation_row_names_its_file_snippet_and_tests():
    """Each row's snippet is in its file exactly once and its tests exist (else the row is stale)."""
    from tools.mutation_check import MUTATIONS, ROOT

    assert len({row.name for row in MUTATIONS}) == len(MUTATIONS)
    for row in MUTATIONS:
        assert (ROOT / row.file).read_text(encoding="utf-8").count(row.old) == 1, row.name
        assert row.old != row.new and row.tests, row.name
        for test in row.tests:
            path, _, name = test.partition("::")
            assert (ROOT / path).is_file(), (row.name, test)
            assert not name or f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), (row.name, test)


def test_mutation_check_lists_its_rows_and_refuses_unknown_names(capsys):
    assert mutation_check.main(["--list", "--only", "cfg-ignored"]) == 0
    assert "CFG ignored" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mutation_check.main(["--only", "no-such-row"])


def test_gpu_check_writes_outcomes_and_figures_as_markdown(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text("""<?xml version="1.0"?><testsuites><testsuite>
      <testcase classname="tests.test_gpu_features" name="test_offload[model]"/>
      <testcase classname="tests.test_gpu_features" name="test_xformers"><skipped message="xformers is not installed"/></testcase>
      <testcase classname="tests.test_gpu_features" name="test_nf4"><failure message="assert 3 &lt; 2&#10;more"/></testcase>
    </testsuite></testsuites>""")
    figures = tmp_path / "figures.jsonl"
    rows = [{"test": "tests/test_gpu_features.py::test_offload[model]", "name": "offload-model", "peak_MiB": 12.5},
            {"test": "tests/test_gpu_features.py::test_nf4", "name": "bnb-nf4", "peak_MiB": 20.0},
            {"test": "tests/test_training_qlora.py::test_qlora", "name": "qlora", "nf4_unet_MiB": 1.5}]
    figures.write_text("".join(json.dumps(row) + "\n" for row in rows))
    import datetime

    text = gpu_check.section(datetime.datetime(2026, 12, 1, 9, 30), "NVIDIA H200 (139.8 GiB)", None, 1, 42.0,
                             gpu_check.test_outcomes(junit), gpu_check.read_figures(figures), [],
                             [("bnb-nf4-not-quantized", "caught", 61.0)])
    assert text.startswith("## GPU check, 2026-12-01 09:30 UTC\n\nDevice: NVIDIA H200 (139.8 GiB).")
    assert "1 passed, 1 failed, 0 errors, 1 skipped in 42 s (pytest exit 1)" in text
    assert "| tests.test_gpu_features::test_xformers | skipped | xformers is not installed |" in text
    assert "| tests.test_gpu_features::test_nf4 | FAILED | assert 3 < 2 |" in text
    assert "| test | name | peak_MiB |" in text and "| test_offload[model] | offload-model | 12.5 |" in text
    assert "| test | name | nf4_unet_MiB |" in text and "| test_qlora | qlora | 1.5 |" in text
    assert "| bnb-nf4-not-quantized | caught | 61 |" in text


def test_gpu_check_refuses_to_run_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--no-install", "--no-write"],
                            cwd=mutation_check.ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no CUDA GPU" in result.stdout
