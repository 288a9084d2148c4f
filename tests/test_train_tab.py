"""The Train tab on a real server, driven with gradio_client: start, progress and loss plot,
cancel, resume, and the LoRA used from txt2img; a second client (a reloaded page) re-attaching
to the running run and cancelling it; the last run shown after a server restart."""

from __future__ import annotations

import json
import os
import time

import pytest
from gradio_client import Client

from tests.test_server import txt2img_args
from tests.test_training import make_images

TRAIN_ARGS = dict(dataset="subject", model="tiny", output_name="tab_lora", instance_prompt="", use_captions=True,
                  prior=False, class_prompt="", num_class=0, resolution=64, rank=4, alpha=4, learning_rate=1e-3,
                  scheduler="constant", warmup=0, max_steps=4, epochs=1, batch_size=1, accumulation=1,
                  checkpoint_every=2, keep=2, mixed_precision="no", checkpointing=False, adam8=False,
                  text_encoder=False, min_snr=0, noise_offset=0, seed=7, random_flip=False, center_crop=True, bucketing=False,
                  validation_prompts="a photo of sks thing", validation_every=0)


def start_server(options):
    """A fresh app (context + blocks) on ``options``, served on a free port: (context, blocks, url)."""
    from tests.conftest import free_port
    from webui.app import create_blocks, create_context
    from webui.server import launch_blocks

    context = create_context(options)
    blocks = create_blocks(context)
    port = free_port()
    launch_blocks(blocks, context, host="127.0.0.1", port=port, block=False)
    return context, blocks, f"http://127.0.0.1:{port}/"


def plot_rows(plot):
    """The data points of a LinePlot output as gradio_client returns it."""
    rows = plot["value"]["data"] if isinstance(plot, dict) and "value" in plot else plot
    return rows.get("data", rows) if isinstance(rows, dict) else rows


@pytest.fixture
def server(tmp_path):
    from tests.conftest import make_options

    options = make_options(tmp_path)
    make_images(options.data_dir / "datasets" / "subject", count=2)
    context, blocks, url = start_server(options)
    try:
        yield {"client": Client(url, verbose=False), "context": context, "url": url, "options": options}
    finally:
        blocks.close()


@pytest.mark.slow
def test_train_tab_start_cancel_resume_and_use(server):
    client, context = server["client"], server["context"]

    # a path instead of a listed dataset folder is refused
    with pytest.raises(Exception, match="dataset"):
        client.predict(**dict(TRAIN_ARGS, dataset="../../etc"), api_name="/train_start")

    # start a run and cancel it as soon as it is going (honoured at the next step), then resume it
    job = client.submit(**dict(TRAIN_ARGS, max_steps=40, checkpoint_every=10), api_name="/train_start")
    deadline = time.time() + 120
    while time.time() < deadline and not job.outputs():
        time.sleep(0.1)
    client.predict(api_name="/train_cancel")
    progress, plot, _gallery, _log = job.result(timeout=180)
    assert "cancelled" in progress, progress
    stopped_at = int(progress.split("step ")[1].split("/")[0])
    assert 1 <= stopped_at < 40
    assert not (context.lora_dir / "tab_lora.safetensors").exists()
    checkpoints = sorted((context.training_dir / "tab_lora" / "checkpoints").glob("*.pt"))
    assert checkpoints

    progress, plot, gallery, _log = client.predict(**dict(TRAIN_ARGS, max_steps=40, checkpoint_every=10),
                                                   api_name="/train_resume")
    events = [json.loads(line) for line in
              (context.training_dir / "tab_lora" / "progress.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "resumed" and events[0]["step"] == stopped_at
    assert "done" in progress and "step 40/40" in progress, progress
    assert len(plot_rows(plot)) == 40 - stopped_at, plot  # the loss plot has the resumed run's points
    assert gallery  # the validation image of the end of the run
    assert (context.lora_dir / "tab_lora.safetensors").exists()

    # the LoRA is usable from txt2img at once
    args = list(txt2img_args(batch_size=1).values()) + [["tab_lora"], "1.0"]
    _gallery, _preview, _status, info, _seed = client.predict(*args, api_name="/txt2img")
    assert 'Lora hashes: "tab_lora: ' in info


def test_train_tab_full_finetune_lands_in_the_model_list(server):
    client, context = server["client"], server["context"]
    progress, _plot, _gallery, _log = client.predict(**dict(TRAIN_ARGS, output_name="tab_full", max_steps=2,
                                                            checkpoint_every=0, validation_prompts="",
                                                            mode="full", use_ema=True), api_name="/train_start")
    assert "done" in progress and "Stable-diffusion" in progress, progress
    assert (context.models_dir / "Stable-diffusion" / "tab_full" / "model_index.json").is_file()
    assert "tab_full" in [source.name for source in context.list_models()]
    assert not (context.lora_dir / "tab_full.safetensors").exists()


def wait_for(job, accept, timeout=180):
    """The first streamed output tuple of a gradio_client ``job`` that ``accept`` takes (or fail)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for output in reversed(job.outputs()):
            if accept(output):
                return output
        if job.done():
            break
        time.sleep(0.2)
    raise AssertionError(f"no accepted output; last: {job.outputs()[-1:] or None}")


def test_a_new_client_reattaches_to_the_running_run_cancels_it_and_a_restart_shows_it(server):
    client, context = server["client"], server["context"]
    name = "reattach_lora"
    started = client.submit(**dict(TRAIN_ARGS, output_name=name, max_steps=400, checkpoint_every=0,
                                   validation_prompts=""), api_name="/train_start")
    wait_for(started, lambda output: "running" in output[0])

    # a reloaded page / another browser: a new session that never pressed Start
    other = Client(server["url"], verbose=False)
    follower = other.submit(api_name="/train_follow")
    progress, plot, _gallery, _log = wait_for(
        follower, lambda output: "running" in output[0] and len(plot_rows(output[1])) >= 2)
    assert f"run `{name}`" in progress and "loss" in progress, progress

    # Cancel from the new session stops the run that the first one started
    assert "Stopping" in other.predict(api_name="/train_cancel")
    progress, plot, _gallery, _log = follower.result(timeout=180)
    assert "cancelled" in progress and "Resume" in progress, progress
    first_progress = started.result(timeout=60)[0]
    assert "cancelled" in first_progress, first_progress
    stopped_at = int(progress.split("step ")[1].split("/")[0])
    assert 1 <= stopped_at < 400 and len(plot_rows(plot)) == stopped_at
    assert sorted((context.training_dir / name / "checkpoints").glob("*.pt"))
    assert not (context.lora_dir / f"{name}.safetensors").exists()
    assert other.predict(api_name="/train_cancel") == "Nothing is training."

    # after a server restart a page shows the last run's final state, read from its run folder
    _context, blocks, url = start_server(server["options"])
    try:
        progress, plot, _gallery, _log = Client(url, verbose=False).predict(api_name="/train_follow")
    finally:
        blocks.close()
    assert "cancelled" in progress and f"step {stopped_at}/400" in progress and name in progress, progress
    assert len(plot_rows(plot)) == stopped_at


def test_last_run_found_and_an_interrupted_run_explained(tmp_path):
    from extensions.train import latest_run_dir, progress_text, settle, summarize
    from webui.api import read_training_events

    assert latest_run_dir(tmp_path / "training") is None
    events = {"old": [{"event": "start", "total_steps": 2, "step": 0}, {"event": "step", "step": 2, "loss": 0.5},
                      {"event": "done", "output": "x"}],
              "newer": [{"event": "start", "total_steps": 10, "step": 0},
                        *({"event": "step", "step": i, "loss": 1.0 / i, "total_steps": 10} for i in (1, 2, 3)),
                        {"event": "checkpoint", "step": 3, "path": "c.pt"}]}
    for offset, (run, rows) in enumerate(events.items()):
        (tmp_path / "training" / run).mkdir(parents=True)
        path = tmp_path / "training" / run / "progress.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.utime(path, (1_000_000 + offset, 1_000_000 + offset))
    run_dir = latest_run_dir(tmp_path / "training")
    assert run_dir.name == "newer"
    summary = settle(summarize(read_training_events(run_dir)), returncode=None)
    text = progress_text(summary, run_dir.name)
    assert summary["status"] == "interrupted" and "step 3/10" in text and "Resume" in text, text
    assert len(summary["losses"]) == 3
    failed = settle(summarize(read_training_events(run_dir)), returncode=1)
    assert failed["status"] == "failed" and "code 1" in failed["message"]
    done = settle(summarize(read_training_events(tmp_path / "training" / "old")), returncode=None)
    assert done["status"] == "done"
