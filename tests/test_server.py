"""A real Easel server driven over HTTP with gradio_client."""

from __future__ import annotations

import pytest
from gradio_client import Client

from webui.api import parse_infotext, read_infotext

pytestmark = pytest.mark.slow


def txt2img_args(**overrides):
    args = dict(model="tiny", prompt="a red fox, (detailed:1.2)", negative_prompt="blurry", sampler="Euler a",
                schedule_type="Automatic", steps=3, width=64, height=64, cfg_scale=5, seed=77, batch_count=1,
                batch_size=2, use_refiner=False, refiner_model=None, refiner_switch_at=0.8)
    args.update(overrides)
    return args


@pytest.fixture(scope="module")
def client(live_server):
    # The UI is up before any model is loaded: models load on first use.
    assert live_server["first_status"] == 200 and live_server["loaded_at_start"] == []
    return Client(live_server["url"], verbose=False)


def test_txt2img_returns_images_whose_infotext_round_trips(client):
    gallery, _preview, status, info, used_seed = client.predict(**txt2img_args(), api_name="/txt2img")
    assert len(gallery) == 2, status
    assert used_seed == 77
    seeds = []
    for item in gallery:
        path = item["image"] if isinstance(item, dict) else item[0]
        prompt, negative, params = parse_infotext(read_infotext(path))
        assert prompt == "a red fox, (detailed:1.2)" and negative == "blurry"
        assert params["Steps"] == "3" and params["Size"] == "64x64" and params["Sampler"] == "Euler a"
        assert params["Model"] == "tiny" and params["CFG scale"] == "5.0"
        seeds.append(int(params["Seed"]))
    assert seeds == [77, 78]
    assert parse_infotext(info)[2]["Seed"] == "77"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(height=100), "multiple of 8"),
        (dict(model="no-such-model"), "no-such-model"),
        (dict(sampler="Flow Euler"), "does not work with sd1"),
        (dict(schedule_type="Sideways"), "Sideways"),
        # the UI's own sliders refuse these before the job is made (Gradio's messages)
        (dict(width=100000), "Value 100000 is greater than maximum value 2048."),
        (dict(steps=0), "Value 0 is less than minimum value 1."),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, overrides, message):
    with pytest.raises(Exception) as failure:
        client.predict(**txt2img_args(**overrides), api_name="/txt2img")
    assert message in str(failure.value)
    gallery, *_ = client.predict(**txt2img_args(batch_size=1), api_name="/txt2img")
    assert len(gallery) == 1


def test_extensions_endpoint_lists_builtins(client):
    table = client.predict(api_name="/extensions")
    names = [row[0] for row in table["data"]]
    assert "txt2img" in names and "extensions_page" in names


def test_extension_controls_reach_the_request_in_one_extras_dict(tmp_path):
    """A control registered by an extension shows in txt2img; API callers set it in the one ``extras``
    argument, whose endpoint signature is the same whichever extensions are loaded."""
    import gradio as gr

    from tests.conftest import free_port, make_options
    from webui.api import Control, hookimpl
    from webui.app import create_blocks, create_context
    from webui.server import launch_blocks

    seen = []

    class Stamp:
        """Adds a text control and records what arrives."""

        @hookimpl
        def register_generation_controls(self, register, tab_id):
            if tab_id == "txt2img":
                register(Control(key="stamp.text", render=lambda ui: gr.Textbox(label="Stamp")))

        @hookimpl
        def before_generation(self, request, model):
            seen.append(dict(request.extras))

    def serve(folder, **options):
        context = create_context(make_options(tmp_path / folder, **options))
        blocks = create_blocks(context)
        port = free_port()
        launch_blocks(blocks, context, port=port, block=False)
        return blocks, Client(f"http://127.0.0.1:{port}/", verbose=False)

    def parameters(client):
        return [parameter["parameter_name"]
                for parameter in client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/txt2img"][
                    "parameters"]]

    with_stamp, stamp_client = serve("with", extra_plugins={"stamp": Stamp()})
    try:
        # positional, as a caller written before any extension was installed would call it, plus extras
        positional = list(txt2img_args(batch_size=1).values()) + [{"stamp.text": "hello from the API"}]
        gallery, *_ = stamp_client.predict(*positional, api_name="/txt2img")
        assert len(gallery) == 1 and seen == [{"stamp.text": "hello from the API"}]
        gallery, *_ = stamp_client.predict(**txt2img_args(batch_size=1), api_name="/txt2img")  # extras left out
        assert len(gallery) == 1 and seen[-1] == {}
        with pytest.raises(Exception, match="extras must be an object"):
            stamp_client.predict(**txt2img_args(batch_size=1), extras=["not", "a", "dict"], api_name="/txt2img")
        with_parameters = parameters(stamp_client)
    finally:
        with_stamp.close()
    without, plain_client = serve("without", disabled_extensions={"lora"})
    try:
        assert parameters(plain_client) == with_parameters == list(txt2img_args()) + ["extras"]
    finally:
        without.close()


def test_max_size_must_be_a_usable_side_and_the_size_sliders_stay_inside_it(make_context, capsys):
    from launch import parse_args
    from webui.app import create_blocks

    for refused in ("64", "1001", "abc", "20000"):
        with pytest.raises(SystemExit):
            parse_args(["--max-size", refused])
        assert "--max-size" in capsys.readouterr().err
    assert parse_args(["--max-size", "256"])[0].max_size == 256

    context = make_context(max_side=256)
    context.settings.remember("txt2img", {"width": 1024, "height": 192})  # saved under a larger --max-size
    blocks = create_blocks(context)
    sliders = {block.elem_id: block for block in blocks.blocks.values()
               if getattr(block, "elem_id", None) in ("txt2img-width", "txt2img-height")}
    assert sliders["txt2img-width"].maximum == 256 and sliders["txt2img-width"].value == 256
    assert sliders["txt2img-height"].value == 192


@pytest.mark.slow
def test_sigterm_stops_the_server_through_its_clean_shutdown(tmp_path):
    """``kill``/``systemctl stop`` end Easel as Ctrl+C does (the job store closes, Ray workers are
    released), not by dying on the spot."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(
        [sys.executable, "launch.py", "--skip-install", "--port", str(port), "--model", "tiny",
         "--data-dir", str(tmp_path / "data"), "--outputs-dir", str(tmp_path / "outputs")],
        cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output[-3000:]
    assert "Easel stopped" in output, output[-3000:]
