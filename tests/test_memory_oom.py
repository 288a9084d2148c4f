"""Out of memory during a job, injected through a real extension hook on a live server:
the memory is freed, the message names options that help, the server keeps serving, and the
optional retry steps down to a lower-memory profile."""

from __future__ import annotations

import pytest
import torch
from gradio_client import Client

from webui.api import hookimpl, parse_infotext, read_infotext

pytestmark = pytest.mark.slow


class OutOfMemoryInjector:
    """Makes the VAE decode of 72-pixel-wide jobs run out of memory (inside the diffusers call,
    where a real high-resolution OOM happens), unless a lower-memory profile is on."""

    def __init__(self):
        self.raised = 0
        self.handle = None

    @hookimpl
    def before_generation(self, request, model):
        if request.width == 72 and model.extension_state.get("profile", "custom") == "custom":
            def explode(module, inputs):
                self.raised += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")

            self.handle = model.pipeline.vae.decoder.register_forward_pre_hook(explode)

    @hookimpl
    def after_generation(self, request, model, result):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def args(**overrides):
    values = dict(model="tiny", prompt="a red fox", negative_prompt="", sampler="Euler", schedule_type="Automatic",
                  steps=2, width=64, height=64, cfg_scale=5, seed=3, batch_count=1, batch_size=1,
                  use_refiner=False, refiner_model=None, refiner_switch_at=0.8)
    values.update(overrides)
    return values


@pytest.fixture
def server(tmp_path):
    from tests.conftest import make_options, start_server

    injector = OutOfMemoryInjector()
    context, blocks, url = start_server(make_options(tmp_path, extra_plugins={"oom_injector": injector}))
    try:
        yield Client(url, verbose=False), context, injector
    finally:
        blocks.close()


def test_injected_oom_is_reported_with_advice_and_the_server_keeps_serving(server):
    client, context, injector = server
    with pytest.raises(Exception) as failure:
        client.predict(**args(width=72), api_name="/txt2img")
    message = str(failure.value)
    assert "Out of memory" in message and "VAE tiling" in message and "--lowvram" in message
    assert "still running" in message and injector.raised == 1
    gallery, *_ = client.predict(**args(), api_name="/txt2img")
    assert len(gallery) == 1
    assert context.pipelines.loaded_names() == ["tiny"]  # the model stays usable


def test_oom_retry_steps_down_to_the_medvram_profile(server):
    client, context, injector = server
    context.settings.update({"presets.oom_retry": True})
    gallery, _preview, status, info, _seed = client.predict(**args(width=72), api_name="/txt2img")
    assert len(gallery) == 1 and injector.raised == 1
    params = parse_infotext(info)[2]
    assert params["Memory profile"].startswith("medvram")
    path = gallery[0]["image"] if isinstance(gallery[0], dict) else gallery[0][0]
    assert parse_infotext(read_infotext(path))[2]["Memory profile"].startswith("medvram")

    # Only that job stepped down: the app's setting is unchanged and the next job runs with it.
    assert context.settings.get("presets.profile") == "custom"
    _gallery, _preview, _status, info, _seed = client.predict(**args(), api_name="/txt2img")
    assert "Memory profile" not in parse_infotext(info)[2]
    gallery, _preview, _status, info, _seed = client.predict(**args(width=72), api_name="/txt2img")
    assert injector.raised == 2  # ran out of memory again under the custom profile, then retried
    assert len(gallery) == 1 and parse_infotext(info)[2]["Memory profile"].startswith("medvram")
    assert context.settings.get("presets.profile") == "custom"
