"""The Train tab on a real server, driven with gradio_client: start, progress and loss plot,
cancel, resume, and the LoRA used from txt2img; a second client (a reloaded page) re-attaching
to the running run and cancelling it; the last run shown after a server restart.

The tests never race the trainer: a run is held at a known step with the trainer's hold file
(the ``train_hold`` fixture) and the tests wait for the events the trainer writes to its
``progress.jsonl`` (:func:`wait_for_event`), so a slow machine only makes them slower."""

from __future__ import annotations

import json
import os
import time

import pytest
from gradio_client import Client

from tests.conftest import start_server
from tests.test_server import txt2img_args
from tests.test_training import make_images

TRAIN_ARGS = dict(dataset="subject", model="tiny", output_name="tab_lora", instance_prompt="", use_captions=True,
                  prior=False, class_prompt="", num_class=0, resolution=64, rank=4, alpha=4, learning_rate=1e-3,
                  scheduler="constant", warmup=0, max_steps=4, epochs=1, batch_size=1, accumulation=1,
                  checkpoint_every=2, keep=2, mixed_precision="no", checkpointing=False, adam8=False,
                  text_encoder=False, min_snr=0, noise_offset=0, seed=7, random_flip=False, center_crop=True, bucketing=False,
                  validation_prompts="a photo of sks thing", validation_every=0)


def wait_for_event(run_dir, accept, job=None, timeout=900):
    """The first event of the run's ``progress.jsonl`` that ``accept`` takes.

    Fails at once with the trainer's message when the run reports an error, or when the
    gradio ``job`` that follows it has ended without the event; ``timeout`` is only a safety net
    against a hung trainer, not a speed requirement.
    """
    from webui.api import read_training_events

    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_training_events(run_dir)
        for event in events:
            if accept(event):
                return event
            if event["event"] == "error":
                raise AssertionError(f"the run failed: {event.get('message')}")
        if job is not None and job.done():
            job.result()  # raises the tab's error, if any
            raise AssertionError(f"the run ended without the awaited event; last events: {events[-3:]}")
        time.sleep(0.1)
    raise AssertionError(f"no awaited event after {timeout} s; last events: {read_training_events(run_dir)[-3:]}")


def step_reached(number):
    """``accept`` for :func:`wait_for_event`: the trainer logged step ``number``."""
    return lambda event: event["event"] == "step" and event["step"] == number


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
def test_train_tab_start_cancel_resume_and_use(server, train_hold):
    client, context = server["client"], server["context"]

    # a path instead of a listed dataset folder is refused
    with pytest.raises(Exception, match="dataset"):
        client.predict(**dict(TRAIN_ARGS, dataset="../../etc"), api_name="/train_start")

    # start a run held after step 3, cancel it there (honoured at the step boundary), then resume it
    train_hold.write_text("3")
    job = client.submit(**dict(TRAIN_ARGS, max_steps=8, checkpoint_every=2), api_name="/train_start")
    wait_for_event(context.training_dir / "tab_lora", step_reached(3), job)
    client.predict(api_name="/train_cancel")
    progress, plot, _gallery, _log = job.result(timeout=180)
    assert "cancelled" in progress and "step 3/8" in progress, progress
    assert len(plot_rows(plot)) == 3, plot
    assert not (context.lora_dir / "tab_lora.safetensors").exists()
    checkpoints = sorted(path.name for path in (context.training_dir / "tab_lora" / "checkpoints").glob("*.pt"))
    assert checkpoints == ["step-000002.pt", "step-000003.pt"]  # the periodic one and the one saved on cancel

    train_hold.unlink()
    progress, plot, gallery, _log = client.predict(**dict(TRAIN_ARGS, max_steps=8, checkpoint_every=2),
                                                   api_name="/train_resume")
    events = [json.loads(line) for line in
              (context.training_dir / "tab_lora" / "progress.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "resumed" and events[0]["step"] == 3
    assert "done" in progress and "step 8/8" in progress, progress
    assert [row[0] for row in plot_rows(plot)] == [4, 5, 6, 7, 8], plot  # the resumed run's points (step, loss)
    assert gallery  # the validation image of the end of the run
    assert (context.lora_dir / "tab_lora.safetensors").exists()

    # the LoRA is usable from txt2img at once
    _gallery, _preview, _status, info, _seed = client.predict(
        **txt2img_args(batch_size=1), extras={"lora.names": ["tab_lora"], "lora.weights": "1.0"}, api_name="/txt2img")
    assert 'Lora hashes: "tab_lora: ' in info


def test_train_tab_full_finetune_lands_in_the_model_list(server):
    client, context = server["client"], server["context"]
    progress, _plot, _gallery, _log = client.predict(**dict(TRAIN_ARGS, output_name="tab_full", max_steps=2,
                                                            checkpoint_every=0, validation_prompts="",
                                                            mode="full", use_ema=True, full_output_format="both"),
                                                     api_name="/train_start")
    assert "done" in progress and "Model **tab_full** saved" in progress, progress
    assert "Checkpoint **tab_full.safetensors** saved" in progress, progress
    assert (context.models_dir / "Stable-diffusion" / "tab_full" / "model_index.json").is_file()
    assert (context.models_dir / "Stable-diffusion" / "tab_full.safetensors").is_file()
    names = [source.name for source in context.list_models()]
    assert "tab_full" in names and "tab_full.safetensors" in names
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


def test_a_new_client_reattaches_to_the_running_run_cancels_it_and_a_restart_shows_it(server, train_hold):
    client, context = server["client"], server["context"]
    name = "reattach_lora"
    train_hold.write_text("2")  # the run waits after step 2: it is running whenever the second client looks
    started = client.submit(**dict(TRAIN_ARGS, output_name=name, max_steps=20, checkpoint_every=0,
                                   validation_prompts=""), api_name="/train_start")
    wait_for_event(context.training_dir / name, step_reached(2), started)

    # a reloaded page / another browser: a new session that never pressed Start
    other = Client(server["url"], verbose=False)
    follower = other.submit(api_name="/train_follow")
    progress, plot, _gallery, _log = wait_for(
        follower, lambda output: "running" in output[0] and len(plot_rows(output[1])) == 2)
    assert f"run `{name}`" in progress and "step 2/20" in progress and "loss" in progress, progress

    # Cancel from the new session stops the run that the first one started
    assert "Stopping" in other.predict(api_name="/train_cancel")
    progress, plot, _gallery, _log = follower.result(timeout=180)
    assert "cancelled" in progress and "Resume" in progress and "step 2/20" in progress, progress
    first_progress = started.result(timeout=60)[0]
    assert "cancelled" in first_progress, first_progress
    stopped_at = 2
    assert len(plot_rows(plot)) == stopped_at
    assert sorted((context.training_dir / name / "checkpoints").glob("*.pt"))
    assert not (context.lora_dir / f"{name}.safetensors").exists()
    assert other.predict(api_name="/train_cancel") == "Nothing is training."

    # after a server restart a page shows the last run's final state, read from its run folder
    _context, blocks, url = start_server(server["options"])
    try:
        progress, plot, _gallery, _log = Client(url, verbose=False).predict(api_name="/train_follow")
    finally:
        blocks.close()
    assert "cancelled" in progress and f"step {stopped_at}/20" in progress and name in progress, progress
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


@pytest.mark.slow
def test_image_jobs_wait_while_a_training_run_holds_the_device_and_say_why(server, train_hold):
    """With the queue told to wait for training (on a GPU it does by default), a txt2img job
    submitted while a run is going waits, its page says why, and it runs once the run ends."""
    client, context = server["client"], server["context"]
    context.settings.update({"train.queue_waits": "always"})
    train_hold.write_text("2")
    run = client.submit(**dict(TRAIN_ARGS, max_steps=4), api_name="/train_start")
    wait_for_event(context.training_dir / "tab_lora", step_reached(2), run)
    assert "training run (tab_lora, step 2/4) is using the CPU" in (context.device_in_use() or "")

    image = Client(server["url"], verbose=False).submit(**txt2img_args(batch_size=1), api_name="/txt2img")
    deadline = time.time() + 120
    while not any("Queued, waiting: a training run (tab_lora" in str(update[2]) for update in image.outputs()):
        assert time.time() < deadline and not image.done(), image.outputs()[-1:] if image.outputs() else "nothing"
        time.sleep(0.1)
    assert not image.done()  # held: the device is the training run's
    train_hold.unlink()  # the run goes on to its end; then the image job starts
    progress, *_ = run.result(timeout=600)
    assert "done" in progress, progress
    gallery, _preview, status, info, _seed = image.result(timeout=300)
    assert len(gallery) == 1 and "image(s) in" in status
    job = [job for job in context.job_queue()._jobs.values() if any(e["kind"] == "waiting" for e in job.events())]
    assert len(job) == 1
    waited_until = max(e["time"] for e in job[0].events() if e["kind"] == "waiting")
    started = next(e["time"] for e in job[0].events() if e["kind"] == "started")
    assert started > waited_until
    # and by default, on the CPU, image jobs do not wait for training
    context.settings.update({"train.queue_waits": "when it uses a GPU"})
    train_hold.write_text("1")
    run = client.submit(**dict(TRAIN_ARGS, max_steps=3, output_name="tab_lora2"), api_name="/train_start")
    wait_for_event(context.training_dir / "tab_lora2", step_reached(1), run)
    assert context.device_in_use() is None
    gallery, *_ = client.predict(**txt2img_args(batch_size=1), api_name="/txt2img")
    assert len(gallery) == 1
    train_hold.unlink()
    run.result(timeout=600)


def test_the_done_line_names_what_a_full_fine_tune_wrote():
    from extensions.train import progress_text, summarize

    def done_line(output, single_file=None):
        events = [{"event": "start", "total_steps": 2, "mode": "full"},
                  {"event": "done", "step": 2, "output": output, **({"single_file": single_file} if single_file else {})}]
        return progress_text(summarize(events), "ft")

    only_file = done_line("/m/Stable-diffusion/ft.safetensors", "/m/Stable-diffusion/ft.safetensors")
    assert "Checkpoint **ft.safetensors** saved" in only_file
    assert "Model **ft** saved" not in only_file and "LoRA" not in only_file
    folder = done_line("/m/Stable-diffusion/ft")
    assert "Model **ft** saved" in folder and "Checkpoint" not in folder
    both = done_line("/m/Stable-diffusion/ft", "/m/Stable-diffusion/ft.safetensors")
    assert "Model **ft** saved" in both and "Checkpoint **ft.safetensors** saved" in both
