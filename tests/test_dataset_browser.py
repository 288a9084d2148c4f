"""A browser-only user makes a training dataset in the Train tab: headless Debian chromium through Playwright.

Upload a zip of demo-domain shape images, caption them with the shapes (demo) captioner, edit
one caption in place, add a trigger word, download the zip -- and check the files on disk. Then
train a 4-step LoRA on the demo model from that dataset and draw with it in txt2img: the image
is judged (it still shows the colours asked for) and its infotext records the LoRA."""

from __future__ import annotations

import io
import re
import zipfile

import pytest

from PIL import Image

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, pick, playwright_or_skip, set_number
from tools.demo_model.judge import judge
from tools.demo_model.shapes import sample
from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()

COUNT = 4


def shapes_zip(path, seed: int = 4242):
    """A zip of demo-domain images inside one top folder (as a user zips a folder); returns the specs by name."""
    specs = {}
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(COUNT):
            image, _, spec = sample(seed, index, 128)
            name = f"shape{index}.png"
            local = path.parent / name
            image.save(local)
            archive.write(local, f"my shapes/{name}")
            specs[name] = spec
    return specs


def wait_status(page, pattern: str, timeout: int = 60_000) -> str:
    page.wait_for_function(
        "(pattern) => new RegExp(pattern).test(document.querySelector('#dataset-status')?.innerText || '')",
        arg=pattern, timeout=timeout)
    return page.locator("#dataset-status").inner_text()


def test_upload_caption_and_edit_a_dataset_in_the_browser(live_server, tmp_path):
    context = live_server["context"]
    specs = shapes_zip(tmp_path / "shapes.zip")
    name = "browser_shapes"
    folder = context.datasets_dir / name
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(live_server["url"], wait_until="domcontentloaded")
            page.get_by_role("tab", name="Train").wait_for(state="visible", timeout=60_000)
            page.get_by_role("tab", name="Train").click()

            page.locator("#dataset-upload input[type=file]").set_input_files(str(tmp_path / "shapes.zip"))
            page.locator("#dataset-upload").get_by_text("shapes.zip").first.wait_for(state="visible", timeout=30_000)
            page.locator("#dataset-new-name textarea, #dataset-new-name input").first.fill(name)
            page.locator("#dataset-create").click()
            wait_status(page, f"{COUNT} image\\(s\\) added")
            assert sorted(p.name for p in folder.iterdir()) == sorted(specs)  # the zip's top folder is dropped
            thumbnails = page.locator("#dataset-gallery .thumbnail-item")
            thumbnails.nth(COUNT - 1).wait_for(state="visible", timeout=30_000)
            assert thumbnails.count() == COUNT
            # the training form's dataset list has it, picked
            assert page.locator("#train-dataset input").first.input_value() == name

            pick(page, "dataset-captioner", "shapes (demo")
            page.locator("#dataset-auto-caption").click()
            wait_status(page, f"{COUNT} image\\(s\\) captioned", timeout=120_000)
            for file_name, spec in specs.items():
                stored = (folder / file_name).with_suffix(".txt").read_text(encoding="utf-8")
                assert stored == spec.caption(name_position=True), (file_name, stored)
            page.wait_for_function(
                "(caption) => document.querySelector('#dataset-gallery')?.innerText.includes(caption)",
                arg=specs["shape1.png"].caption(name_position=True), timeout=30_000)

            # edit one caption in place
            thumbnails.nth(1).click()
            caption_box = page.locator("#dataset-caption textarea, #dataset-caption input").first
            page.wait_for_function(
                "(caption) => (document.querySelector('#dataset-caption textarea, #dataset-caption input')"
                "?.value || '') === caption", arg=specs["shape1.png"].caption(name_position=True), timeout=30_000)
            caption_box.fill("a hand-written caption")
            page.locator("#dataset-save-caption").click()
            wait_status(page, "shape1\\.png.{0,2}saved")
            assert (folder / "shape1.txt").read_text(encoding="utf-8") == "a hand-written caption"
            assert (folder / "shape0.txt").read_text(encoding="utf-8") == specs["shape0.png"].caption(True)

            # a trigger word at the front of every caption, once
            page.locator("#dataset-trigger textarea, #dataset-trigger input").first.fill("sks")
            page.locator("#dataset-add-trigger").click()
            wait_status(page, f"added to {COUNT} caption")
            assert (folder / "shape1.txt").read_text(encoding="utf-8") == "sks, a hand-written caption"

            # download: the zip holds the images and captions
            page.locator("#dataset-download").click()
            link = page.locator("#dataset-zip a").first
            link.wait_for(state="attached", timeout=30_000)
            with page.expect_download() as download_info:
                link.click()
            downloaded = tmp_path / "downloaded.zip"
            download_info.value.save_as(downloaded)
            with zipfile.ZipFile(downloaded) as archive:
                names = set(archive.namelist())
                assert names == set(specs) | {n.replace(".png", ".txt") for n in specs}
                assert archive.read("shape1.txt").decode() == "sks, a hand-written caption"
            page.screenshot(path=str(tmp_path / "dataset.png"), full_page=True)

            if (DEMO_MODEL_DIR / "model_index.json").is_file():
                train_and_draw(page, context, name, tmp_path)
        finally:
            browser.close()
    assert re.match(r"^sks, a (small|large) ", (folder / "shape0.txt").read_text(encoding="utf-8"))


def train_and_draw(page, context, dataset: str, tmp_path) -> None:
    """Train a 4-step LoRA on the demo model from ``dataset`` in the Train tab, then draw with it in txt2img."""
    lora = "browser_shapes_lora"
    pick(page, "train-model", DEMO_MODEL_NAME)
    page.locator("#train-name textarea, #train-name input").first.fill(lora)
    set_number(page, "train-resolution", "128")
    set_number(page, "train-steps", "4")
    page.locator("#train-start").click()
    page.wait_for_function(
        "() => /(done|failed|error)/.test(document.querySelector('#train-progress')?.innerText || '')",
        timeout=600_000)
    progress = page.locator("#train-progress").inner_text()
    assert "done" in progress and "step 4/4" in progress, progress
    assert (context.lora_dir / f"{lora}.safetensors").is_file()
    config = (context.training_dir / lora / "config.json").read_text(encoding="utf-8")
    assert str(context.datasets_dir / dataset) in config  # trained on the dataset made in the browser

    page.get_by_role("tab", name="txt2img").first.click()
    page.locator("#txt2img-prompt textarea").fill(f"a large red circle on a blue background <lora:{lora}:1>")
    for slider, value in (("steps", "20"), ("width", "128"), ("height", "128")):
        set_number(page, f"txt2img-{slider}", value)
    page.locator("#txt2img-generate").click()
    page.wait_for_function(
        "() => (document.querySelector('#txt2img-info textarea')?.value || '').includes('Lora hashes')",
        timeout=300_000)
    info = page.locator("#txt2img-info textarea").input_value()
    assert f"{lora}:" in info and f"Model: {DEMO_MODEL_NAME}" in info, info
    served = page.request.get(page.locator("#txt2img-gallery img").first.get_attribute("src"))
    verdict = judge(Image.open(io.BytesIO(served.body())))
    assert (verdict.colour, verdict.background) == ("red", "blue"), verdict
    page.screenshot(path=str(tmp_path / "txt2img-lora.png"), full_page=True)
