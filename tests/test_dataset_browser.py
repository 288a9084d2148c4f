"""A browser-only user makes a training dataset in the Train tab: headless Debian chromium through Playwright.

Upload a zip of demo-domain shape images, caption them with the shapes (demo) captioner, edit
one caption in place, add a trigger word, download the zip -- and check the files on disk."""

from __future__ import annotations

import re
import zipfile

import pytest

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, pick, playwright_or_skip
from tools.demo_model.shapes import sample

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
        finally:
            browser.close()
    assert re.match(r"^sks, a (small|large) ", (folder / "shape0.txt").read_text(encoding="utf-8"))
