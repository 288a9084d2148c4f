"""The Models page and what it stands on: the local models listing (size, family, SHA-256, origin),
downloads through the app (its policy), export of a diffusers folder, and on a real server the
download form (gradio_client and Chromium) after which txt2img's model list shows the new model."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from safetensors.torch import save_file

from tests.model_server import ModelServer
from webui.errors import EaselError
from webui.pipelines.downloads import DownloadError


def tiny_checkpoint_bytes(tmp_path) -> bytes:
    """A real single-file checkpoint (the built-in tiny model, original layout)."""
    from webui.pipelines.export import export_single_file
    from webui.pipelines.tiny import build_tiny_pipeline

    return export_single_file(build_tiny_pipeline("tiny"), tmp_path / "made" / "mini.safetensors").read_bytes()


@pytest.fixture
def model_server(tmp_path):
    server = ModelServer({"/files/mini.safetensors": tiny_checkpoint_bytes(tmp_path)}).start()
    yield server
    server.stop()


def test_local_models_lists_size_family_hash_and_origin(make_context, model_server, tmp_path):
    from webui.pipelines.tiny import build_tiny_pipeline, save_tiny_pipeline

    context = make_context(allow_lan_downloads=True)
    models = context.models_dir
    save_tiny_pipeline("tiny-sdxl", models / "Stable-diffusion" / "xl-folder")
    (models / "Lora").mkdir(parents=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(models / "Lora" / "style.safetensors"),
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (models / "VAE").mkdir(parents=True)
    save_file(build_tiny_pipeline("tiny").vae.state_dict(), str(models / "VAE" / "my-vae.safetensors"))
    result = context.download_model(model_server.url + "/files/mini.safetensors")

    rows = {row.name: row for row in context.local_models()}
    assert set(rows) == {"mini.safetensors", "xl-folder", "style.safetensors", "my-vae.safetensors"}
    mini = rows["mini.safetensors"]
    data = result.path.read_bytes()
    assert mini.kind == "checkpoint" and mini.family == "sd1" and mini.size_bytes == len(data)
    assert mini.sha256 == hashlib.sha256(data).hexdigest() == result.sha256 and mini.short_hash == mini.sha256[:10]
    assert mini.origin.source == "url" and mini.origin.describe() == f"url: {model_server.url}/files/mini.safetensors"
    folder = rows["xl-folder"]
    unet = models / "Stable-diffusion" / "xl-folder" / "unet" / "diffusion_pytorch_model.safetensors"
    assert folder.is_folder and folder.family == "sdxl" and folder.origin is None
    assert folder.sha256 == hashlib.sha256(unet.read_bytes()).hexdigest()
    assert folder.size_bytes == sum(p.stat().st_size for p in folder.path.rglob("*") if p.is_file())
    assert rows["style.safetensors"].kind == "lora" and rows["style.safetensors"].family == "sdxl"
    assert rows["my-vae.safetensors"].kind == "vae" and rows["my-vae.safetensors"].family == "sd1/sd2/sdxl"


def test_the_app_policy_refuses_loopback_when_listening_and_downloads_without_login(make_context, model_server):
    url = model_server.url + "/files/mini.safetensors"
    with pytest.raises(DownloadError, match="--auth"):
        make_context(listening=True).download_model(url)
    with pytest.raises(DownloadError, match="loopback"):
        make_context(listening=True, login_required=True).download_model(url.replace("http:", "https:"))
    with pytest.raises(DownloadError, match="only https://"):
        make_context().download_model(url)  # a localhost server: https only unless --allow-lan-downloads
    assert model_server.requests == []


def test_export_a_listed_folder_to_one_file_that_easel_lists_and_draws(make_context):
    import numpy as np

    from webui.jobs import GenerationRequest
    from webui.pipelines.tiny import save_tiny_pipeline

    context = make_context()
    save_tiny_pipeline("tiny", context.models_dir / "Stable-diffusion" / "my-model")
    path = context.export_model("my-model", "my-model-single")
    assert path == context.models_dir / "Stable-diffusion" / "my-model-single.safetensors"
    rows = {row.name: row for row in context.local_models()}
    assert rows["my-model-single.safetensors"].origin.describe() == "export: my-model"
    request = dict(prompt="a house", seed=5, width=64, height=64, steps=3, sampler="Euler")
    a = context.generate(GenerationRequest(model="my-model", **request)).images[0].image
    b = context.generate(GenerationRequest(model="my-model-single.safetensors", **request)).images[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(EaselError, match="already exists"):
        context.export_model("my-model", "my-model-single")
    with pytest.raises(EaselError, match="not a local diffusers folder"):
        context.export_model("tiny")


@pytest.fixture
def page_server(tmp_path):
    from tests.conftest import make_options, start_server
    from webui.pipelines.tiny import save_tiny_pipeline

    options = make_options(tmp_path / "app", allow_lan_downloads=True)
    save_tiny_pipeline("tiny", options.models_dir / "Stable-diffusion" / "my-folder")  # for the export form
    context, blocks, url = start_server(options)
    try:
        yield context, url
    finally:
        blocks.close()


@pytest.mark.slow
def test_download_and_export_through_the_page_api(page_server, model_server):
    from gradio_client import Client

    context, url = page_server
    client = Client(url, verbose=False)
    data = model_server.files["/files/mini.safetensors"]
    sha = hashlib.sha256(data).hexdigest()
    status, table = client.predict(model_server.url + "/files/mini.safetensors", "checkpoint", "", sha,
                                   api_name="/models_download")
    assert f"SHA-256 `{sha}`" in status and "matches the expected hash" in status
    assert "mini.safetensors" in [source.name for source in context.list_models()]
    assert any(row[1] == "mini.safetensors" and row[4] == sha for row in table["data"])
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="pickle"):
        client.predict(model_server.url + "/files/mini.ckpt", "checkpoint", "", "", api_name="/models_download")

    status, table = client.predict("my-folder", "", False, api_name="/models_export")
    assert "Exported **my-folder.safetensors**" in status
    assert (context.models_dir / "Stable-diffusion" / "my-folder.safetensors").is_file()
    assert any(row[1] == "my-folder.safetensors" and row[5] == "export: my-folder" for row in table["data"])


@pytest.mark.slow
@pytest.mark.browser
def test_download_in_the_browser_then_txt2img_lists_the_model(page_server, model_server):
    from tests.browser_support import open_app, playwright_or_skip

    playwright_api = playwright_or_skip()
    context, url = page_server
    sha = hashlib.sha256(model_server.files["/files/mini.safetensors"]).hexdigest()
    model_server.slow["/files/mini.safetensors"] = 4.0  # long enough to see the progress bar move
    with open_app(playwright_api, url) as page:
        page.get_by_role("tab", name="Models", exact=True).first.click()
        page.locator("#models-source textarea, #models-source input").first.fill(
            model_server.url + "/files/mini.safetensors")
        page.locator("#models-download").click()
        # the progress bar's text: "<file>: <done> of <total>"
        page.get_by_text(re.compile(r"mini\.safetensors: [\d.]+ \w+ of [\d.]+ \w+")).first.wait_for(timeout=30_000)
        status = page.locator("#models-download-status")
        status.get_by_text(sha).wait_for(timeout=60_000)
        assert "mini.safetensors" in page.locator("#models-table").inner_text()

        # every model list of every tab (registered with ui.register_model_list) shows it now
        for tab, list_id in (("txt2img", "txt2img-model"), ("img2img", "img2img-model"),
                             ("Background", "background-model"), ("Train", "train-model")):
            page.get_by_role("tab", name=tab, exact=True).first.click()
            field = page.locator(f"#{list_id} input").first
            field.click()
            field.fill("mini")
            page.get_by_role("option", name="mini.safetensors").first.wait_for(timeout=10_000)
            field.press("Escape")


def test_listing_without_computing_hashes_reads_no_weights(make_context):
    from webui.pipelines.tiny import save_tiny_pipeline

    context = make_context()
    save_tiny_pipeline("tiny", context.models_dir / "Stable-diffusion" / "folder-model")
    assert [row.sha256 for row in context.local_models(compute_hashes=False)] == [""]
    computed = context.local_models()[0].sha256
    assert len(computed) == 64
    assert [row.sha256 for row in context.local_models(compute_hashes=False)] == [computed]  # cached now
