"""A person trains a LoRA in the Train tab: headless Debian chromium through Playwright, tiny at 64 px."""

from __future__ import annotations

import re

import pytest

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, pick, playwright_or_skip, set_number
from tests.test_training import make_images

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()


def test_train_a_lora_in_the_browser_and_find_it_in_txt2img(live_server, tmp_path):
    context = live_server["context"]
    make_images(context.datasets_dir / "browser_set", count=2)
    name = "browser_lora"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(live_server["url"], wait_until="domcontentloaded")
            page.get_by_role("tab", name="Train").wait_for(state="visible", timeout=60_000)
            page.get_by_role("tab", name="Train").click()
            page.get_by_role("button", name="Refresh").first.click()  # the dataset made after start-up
            pick(page, "train-dataset", "browser_set")
            pick(page, "train-model", "tiny")
            page.locator("#train-name textarea, #train-name input").first.fill(name)
            set_number(page, "train-resolution", "64")
            set_number(page, "train-steps", "4")
            page.locator("#train-start").click()
            page.wait_for_function(
                "() => /step [1-9]/.test(document.querySelector('#train-progress')?.innerText || '')",
                timeout=60_000)
            page.wait_for_function(
                "() => /(done|failed|error)/.test(document.querySelector('#train-progress')?.innerText || '')",
                timeout=60_000)
            progress = page.locator("#train-progress").inner_text()
            assert "done" in progress and "step 4/4" in progress, progress
            assert "loss" in progress
            page.locator("#train-loss canvas, #train-loss svg").first.wait_for(state="visible", timeout=15_000)
            assert (context.lora_dir / f"{name}.safetensors").exists()
            page.screenshot(path=str(tmp_path / "train.png"), full_page=True)

            # the LoRA is in txt2img's picker (it lists models/Lora/ again on focus)
            page.get_by_role("tab", name="txt2img").first.click()
            field = page.locator("#txt2img-lora-names input").first
            field.click()
            field.fill(name)
            page.get_by_role("option", name=re.compile(name)).first.wait_for(state="visible", timeout=15_000)
        finally:
            browser.close()
