"""The Train tab on a real server, driven with gradio_client: start, progress and loss plot,
cancel, resume, and the LoRA used from txt2img."""

from __future__ import annotations

import json
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


@pytest.fixture
def server(tmp_path):
    from tests.conftest import free_port, make_options
    from webui.app import create_blocks, create_context
    from webui.server import launch_blocks

    options = make_options(tmp_path)
    make_images(options.data_dir / "datasets" / "subject", count=2)
    context = create_context(options)
    blocks = create_blocks(context)
    port = free_port()
    launch_blocks(blocks, context, host="127.0.0.1", port=port, block=False)
    try:
        yield {"client": Client(f"http://127.0.0.1:{port}/", verbose=False), "context": context}
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
    rows = plot["value"]["data"] if isinstance(plot, dict) and "value" in plot else plot
    assert rows, plot  # the loss plot has points
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
