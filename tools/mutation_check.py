"""Mutation check: break the code on purpose and watch the tests that guard it fail.

    python -m tools.mutation_check                        # every row of MUTATIONS
    python -m tools.mutation_check --only cfg-ignored     # one row (repeat --only for more)
    python -m tools.mutation_check --list                 # the rows, without running anything
    python -m tools.mutation_check --baseline             # also run each row's tests unbroken first

A test that passes whatever the code does proves nothing. Each row of :data:`MUTATIONS` is a
plausible bug: a file, an exact snippet of it (``old``), what to put in its place (``new``)
and the tests that must fail when that bug is in. The git-tracked (and new, not ignored)
files of the working tree are copied once into a temporary folder; each row is applied
there, its tests are run with pytest, and the file is put back. One line per row:

* ``caught``: the tests failed, as they must;
* ``NOT CAUGHT``: they all passed (or were all skipped) with the bug in: the tests have a hole;
* ``stale snippet``: ``old`` is not in the file exactly once any more (the code moved on:
  update the row);
* ``error``: pytest could not run the tests (a wrong node id, a collection error) or they
  ran past ``--timeout``;
* ``skipped``: the row needs CUDA and this machine has none.

It exits non-zero unless every row that ran was caught. To add a row, see CONTRIBUTING.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """One deliberate breakage and the tests that must catch it."""

    name: str
    what: str  # the bug, in words
    file: str  # relative to the repository root
    old: str  # exact text, present exactly once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest node ids or test files, run in this order (-x: the first failure ends the run)
    needs_cuda: bool = False


MUTATIONS: list[Mutation] = [
    # ----- the rows of issue 17's table -----
    Mutation(
        name="paste-back-unchanged",
        what="the subject paste-back returns the inpainted image unchanged",
        file="extensions/background/composite.py",
        old="    out = np.array(generated, dtype=np.uint8)\n    if not mask.any():\n",
        new="    out = np.array(generated, dtype=np.uint8)\n    if True:  # mutation: nothing pasted back\n",
        tests=("tests/test_background_masks.py::test_composite_keeps_the_eroded_subject_pixel_identical",),
    ),
    Mutation(
        name="inpaint-mask-inverted",
        what="the inpainting mask inverted (repaint the subject, keep the background)",
        file="extensions/background/engine.py",
        old="    repaint = ~core if core.any() else ~mask\n",
        new="    repaint = core if core.any() else mask  # mutation: inverted\n",
        tests=("tests/test_background_engine.py", "tests/test_demo_background.py"),
    ),
    Mutation(
        name="lora-weight-ignored",
        what="a LoRA's weight ignored unless it is 0 (any other weight acts as 1.0)",
        file="extensions/lora/__init__.py",
        old="        weights.append(float(weight))\n",
        new="        weights.append(1.0 if float(weight) else 0.0)  # mutation: weight ignored\n",
        tests=("tests/test_lora.py",),
    ),
    Mutation(
        name="lora-not-loaded",
        what="the LoRA loader skips loading",
        file="extensions/lora/__init__.py",
        old="            pipe.load_lora_weights(str(path), adapter_name=adapter)\n",
        new="            continue  # mutation: nothing loaded\n",
        tests=("tests/test_lora.py::test_lora_changes_image_and_leaves_no_trace",),
    ),
    Mutation(
        name="cfg-ignored",
        what="CFG ignored (the guidance scale never reaches the pipeline)",
        file="webui/generation.py",
        old="        guidance_scale=request.cfg_scale,\n        generator=generators,\n",
        new="        guidance_scale=1.0,  # mutation: CFG ignored\n        generator=generators,\n",
        tests=("tests/test_generation.py::test_manager_output_is_bit_identical_to_bare_diffusers",
               "tests/test_demo_model.py::test_prompt_adherence_and_vae_fidelity_hold"),
    ),
    Mutation(
        name="quanto-int8-noise",
        what="quanto-int8 weights replaced with random noise",
        file="extensions/quantization/__init__.py",
        old="        module = getattr(model.pipeline, name)\n        quantize(module, weights=qint8)\n",
        new=("        module = getattr(model.pipeline, name)\n"
             "        with torch.no_grad():  # mutation: the weights become noise of the same scale\n"
             "            for parameter in module.parameters():\n"
             "                parameter.copy_(torch.randn_like(parameter) * parameter.std())\n"
             "        quantize(module, weights=qint8)\n"),
        tests=("tests/test_demo_model.py", "tests/test_memory_extensions.py"),
    ),
    # ----- the checks that could not fail before issue 17 -----
    Mutation(
        name="judge-reads-noise-as-a-shape",
        what="the demo judge grades an image without a plain background (noise) as a shape",
        file="tools/demo_model/judge.py",
        old="    if plain_fraction(pixels, background_rgb) < MIN_PLAIN_BORDER:\n",
        new="    if False:  # mutation: no plain-background check\n",
        tests=("tests/test_demo_shapes.py::test_noise_is_not_mistaken_for_a_shape",),
    ),
    Mutation(
        name="vae-psnr-scale",
        what="the VAE PSNR measure forgets that pixels span [-1, 1] (error not halved)",
        file="tools/demo_model/evaluate.py",
        old="            mse = float(((decoded - pixels.float()) / 2).pow(2).mean())\n",
        new="            mse = float((decoded - pixels.float()).pow(2).mean())  # mutation: not halved\n",
        tests=("tests/test_demo_training.py::test_vae_psnr_gives_known_answers",),
    ),
    Mutation(
        name="adherence-judges-the-prompt",
        what="the adherence measure judges a rendering of the prompt instead of the drawn image",
        file="tools/demo_model/evaluate.py",
        old="    return [judge(draw(caption, seed)).matches(parse_caption(caption)) for caption, seed in pairs]\n",
        new=("    from tools.demo_model.shapes import render  # mutation: the drawer is never looked at\n"
             "    return [judge(render(parse_caption(caption))).matches(parse_caption(caption))\n"
             "            for caption, seed in pairs]\n"),
        tests=("tests/test_demo_training.py::"
               "test_adherence_gives_full_marks_to_a_perfect_drawer_and_low_ones_to_a_deaf_drawer",),
    ),
    Mutation(
        name="demo-trainer-never-steps",
        what="the demo trainer computes each stage's loss but never updates the weights",
        file="tools/demo_model/train.py",
        old="            optimizer.step()\n",
        new="            pass  # mutation: optimizer.step() dropped\n",
        tests=("tests/test_demo_training.py::test_quick_run_trains_and_saves_a_pipeline_that_draws",),
    ),
    Mutation(
        name="extensions-table-hides-failures",
        what="the Extensions page lists only the extensions that loaded",
        file="extensions/extensions_page/__init__.py",
        old="    for info in ui.context.extensions():\n",
        new="    for info in [i for i in ui.context.extensions() if i.status == 'loaded']:  # mutation\n",
        tests=("tests/test_extensions.py::test_broken_drop_in_extensions_are_listed_and_skipped",),
    ),
    Mutation(
        name="infotext-quotes-too-little",
        what="infotext values ending in a tab are written unquoted (only spaces count as whitespace)",
        file="webui/infotext.py",
        old="    if _NEEDS_QUOTES.search(text) or text != text.strip():\n",
        new="    if _NEEDS_QUOTES.search(text) or text != text.strip(\" \"):  # mutation: only spaces\n",
        tests=("tests/test_infotext.py::test_quote_like_a1111",),
    ),
    Mutation(
        name="bench-step-time-in-ms",
        what="the memory benchmark reports a single step's time in milliseconds",
        file="tools/bench/memory.py",
        old="        figures[\"s_per_step\"] = round(stamps[0] - started, 4)\n",
        new="        figures[\"s_per_step\"] = round((stamps[0] - started) * 1000, 4)  # mutation: ms\n",
        tests=("tests/test_bench_memory.py::test_memory_benchmark_smoke",),
    ),
    Mutation(
        name="palette-transparency-dropped",
        what="an uploaded palette PNG loses its transparent colour (no subject mask from it)",
        file="extensions/background/masks.py",
        old="    if mode == \"P\":\n        image = image.convert(\"RGBA\")\n",
        new="    if mode == \"P\":\n        image = image.convert(\"RGB\")  # mutation: transparency dropped\n",
        tests=("tests/test_background_tab.py::test_odd_uploads_give_a_result_or_a_message",),
    ),
    Mutation(
        name="detector-stays-on-the-device",
        what="the detector is not moved back to the CPU after its step",
        file="extensions/background/engine.py",
        old=("            found = model.detect(work, prompt, box_threshold=box_threshold, text_threshold=text_threshold)\n"
             "        finally:\n            model.to(\"cpu\")\n"),
        new=("            found = model.detect(work, prompt, box_threshold=box_threshold, text_threshold=text_threshold)\n"
             "        finally:\n            pass  # mutation: left on the device\n"),
        tests=("tests/test_background_engine.py::test_detector_and_segmenter_run_on_the_device_and_go_back_to_the_cpu",),
    ),
    Mutation(
        name="resume-starts-over",
        what="Resume in the Train tab ignores the checkpoint and trains from step 0",
        file="webui/training/trainer.py",
        old="        if config.resume and latest:\n",
        new="        if False and config.resume and latest:  # mutation: resume ignored\n",
        tests=("tests/test_train_tab.py::test_train_tab_start_cancel_resume_and_use",),
    ),
    # ----- one job path and one queue (issue 12) -----
    Mutation(
        name="queue-last-in-first-out",
        what="the queue runs the newest waiting job first",
        file="webui/queue.py",
        old="                job, request = self._pending.popleft()\n",
        new="                job, request = self._pending.pop()  # mutation: LIFO\n",
        tests=("tests/test_queue.py::test_jobs_run_one_after_the_other_in_submission_order_and_know_their_place",),
    ),
    Mutation(
        name="inpaint-keeps-nothing",
        what="inpaint returns the generated image without pasting the original back outside the mask",
        file="webui/tasks.py",
        old="        return Image.composite(image.convert(\"RGB\"), original, prepared.paste_mask)\n",
        new="        return image.convert(\"RGB\")  # mutation: no paste-back\n",
        tests=("tests/test_tasks.py::test_mask_mode_invert_repaints_the_other_side",),
    ),
    Mutation(
        name="img2img-strength-ignored",
        what="img2img ignores the denoising strength (diffusers' default 0.8 is used)",
        file="webui/tasks.py",
        old="        arguments: dict[str, Any] = {\"image\": image, \"strength\": float(request.denoising_strength)}\n",
        new="        arguments: dict[str, Any] = {\"image\": image}  # mutation: strength dropped\n",
        tests=("tests/test_tasks.py::test_img2img_is_bit_identical_to_diffusers_img2img_pipeline",),
    ),
    Mutation(
        name="queue-ignores-training",
        what="the queue starts image jobs while a training run holds the device",
        file="webui/queue.py",
        old="                if has_work:\n                    self._wait_for_the_device()\n",
        new="                if False:  # mutation: never waits for the device\n                    self._wait_for_the_device()\n",
        tests=("tests/test_train_tab.py::test_image_jobs_wait_while_a_training_run_holds_the_device_and_say_why",),
    ),
    # ----- backends: Ray Serve workers (issue 14) -----
    Mutation(
        name="requeue-at-the-back",
        what="a job whose worker died goes to the back of the queue instead of its head",
        file="webui/queue.py",
        old="                self._pending.appendleft((job, request))  # its place is announced when this worker lets go\n",
        new="                self._pending.append((job, request))  # mutation: back of the queue\n",
        tests=("tests/test_backends.py::test_a_job_its_backend_gives_back_runs_again_first_in_line_and_says_it_was_retried",),
    ),
    Mutation(
        name="busy-queue-never-looks-at-the-device",
        what="a worker thread waiting for a free worker never looks at the device again (no reason shown)",
        file="webui/queue.py",
        old="                return NO_FREE_WORKER\n",
        new="                continue  # mutation: keeps waiting for a slot\n",
        tests=("tests/test_backends.py::test_jobs_no_worker_can_take_say_why_when_the_backend_says_every_workers_device_is_held",),
    ),
    Mutation(
        name="sigterm-kills-at-once",
        what="SIGTERM kills Easel on the spot instead of going through its clean shutdown",
        file="webui/server.py",
        old="    stop_on_sigterm()  # after create_context: the Ray backend's ray.init installs a handler that aborts\n",
        new="    pass  # mutation: no SIGTERM handler\n",
        tests=("tests/test_server.py::test_sigterm_stops_the_server_through_its_clean_shutdown",),
    ),
    # ----- CUDA-only features (run by python -m tools.gpu_check on a GPU machine) -----
    Mutation(
        name="bnb-nf4-not-quantized",
        what="bitsandbytes NF4 reloads the UNet without its quantization config",
        file="extensions/quantization/__init__.py",
        old="                                                 quantization_config=component_config)\n",
        new="                                                 quantization_config=None)  # mutation\n",
        tests=("tests/test_gpu_features.py::test_bitsandbytes_quantization_generates_what_none_does",),
        needs_cuda=True,
    ),
    Mutation(
        name="model-offload-ignored",
        what="offload mode 'model' leaves the whole pipeline on the GPU",
        file="extensions/offload/__init__.py",
        old="        pipe.enable_model_cpu_offload(device=device)\n",
        new="        pipe.to(device)  # mutation: nothing offloaded\n",
        tests=("tests/test_gpu_features.py::test_offload_generates_the_image_of_none_with_less_memory",),
        needs_cuda=True,
    ),
]


@dataclass
class Outcome:
    """What happened to one row."""

    status: str  # caught | NOT CAUGHT | stale snippet | error | skipped
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("caught", "skipped")


def project_files(root: Path) -> list[str]:
    """Tracked files and new files git does not ignore, as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.decode("utf-8")
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def scratch_copy(root: Path, destination: Path) -> None:
    """Copy the project's files (see :func:`project_files`) into ``destination``."""
    for name in project_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def run_tests(scratch: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """Run ``tests`` with pytest inside ``scratch``: (exit code or None on timeout, output tail)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(scratch))
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, output[-2000:]
    return proc.returncode, (proc.stdout + proc.stderr)[-2000:]


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check(mutation: Mutation, scratch: Path, timeout: float, baseline: bool, has_cuda: bool) -> Outcome:
    """Apply one row in ``scratch``, run its tests, put the file back."""
    started = time.monotonic()
    if mutation.needs_cuda and not has_cuda:
        return Outcome("skipped", 0.0, "needs CUDA")
    path = scratch / mutation.file
    original = path.read_text(encoding="utf-8") if path.is_file() else ""
    count = original.count(mutation.old)
    if count != 1:
        return Outcome("stale snippet", 0.0, f"`old` found {count} times in {mutation.file}")
    if baseline:
        code, output = run_tests(scratch, mutation.tests, timeout)
        if code != 0:
            return Outcome("error", time.monotonic() - started, f"fails unbroken: {last_line(output)}")
    path.write_text(original.replace(mutation.old, mutation.new), encoding="utf-8")
    try:
        code, output = run_tests(scratch, mutation.tests, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.monotonic() - started
    if code == 1:
        return Outcome("caught", seconds, last_line(output))
    if code == 0:
        return Outcome("NOT CAUGHT", seconds, last_line(output))
    if code is None:
        return Outcome("error", seconds, f"ran past {timeout:.0f} s")
    return Outcome("error", seconds, f"pytest exit {code}: {last_line(output)}")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this row (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--baseline", action="store_true", help="first check each row's tests pass unbroken")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run (default 1800)")
    args = parser.parse_args(argv)
    names = {mutation.name for mutation in MUTATIONS}
    unknown = [name for name in args.only if name not in names]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; --list shows them")
    selected = [mutation for mutation in MUTATIONS if not args.only or mutation.name in args.only]
    if args.list:
        for mutation in selected:
            cuda = " [CUDA]" if mutation.needs_cuda else ""
            print(f"{mutation.name:<34} {mutation.what}{cuda}\n{'':<34} -> {' '.join(mutation.tests)}")
        return 0
    has_cuda = cuda_available()
    started = time.monotonic()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="easel-mutation-") as folder:
        scratch = Path(folder)
        scratch_copy(ROOT, scratch)
        for mutation in selected:
            outcome = check(mutation, scratch, args.timeout, args.baseline, has_cuda)
            outcomes.append(outcome)
            print(f"{outcome.status:<14} {mutation.name:<34} {outcome.seconds:7.1f} s  {mutation.what}"
                  + (f"\n{'':<15}{outcome.detail}" if outcome.detail and not outcome.ok else ""), flush=True)
    failed = sum(not outcome.ok for outcome in outcomes)
    skipped = sum(outcome.status == "skipped" for outcome in outcomes)
    print(f"{len(outcomes) - failed - skipped} caught, {failed} not, {skipped} skipped "
          f"of {len(outcomes)} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
