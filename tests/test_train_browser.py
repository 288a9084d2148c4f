"""A person trains a LoRA in the Train tab, and reloads the page while a run trains: headless Debian
chromium through Playwright, tiny at 64 px.

The runs are held at a known step with the trainer's hold file (``train_hold``) and the tests wait
for the trainer's own events (``progress.jsonl``), never for the trainer to be fast enough."""

from __future__ import annotations

import re

import pytest
from gradio_client import Client

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, pick, playwright_or_skip, set_number
from tests.test_train_tab import TRAIN_ARGS, step_reached, wait_for_event
from tests.test_training import make_images

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()


def test_train_a_lora_in_the_browser_and_find_it_in_txt2img(live_server, tmp_path, train_hold):
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
            train_hold.write_text("1")  # the run waits after step 1: the page must show it running there
            page.locator("#train-start").click()
            wait_for_event(context.training_dir / name, step_reached(1))
            page.wait_for_function(
                "() => /running.*step 1\\/4/.test(document.querySelector('#train-progress')?.innerText || '')",
                timeout=60_000)
            train_hold.unlink()
            wait_for_event(context.training_dir / name, lambda event: event["event"] in ("done", "cancelled"))
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


def test_a_reloaded_page_follows_the_running_run_and_cancels_it(live_server, train_hold):
    context = live_server["context"]
    make_images(context.datasets_dir / "reattach_set", count=2)
    name = "browser_reattach"

    # the run is started by someone else (another browser); this page never pressed Start.
    # It waits after step 1 until cancelled, so it is running whenever the page looks.
    train_hold.write_text("1")
    job = Client(live_server["url"], verbose=False).submit(
        **dict(TRAIN_ARGS, dataset="reattach_set", output_name=name, max_steps=20, checkpoint_every=0,
               validation_prompts=""), api_name="/train_start")
    wait_for_event(context.training_dir / name, step_reached(1), job)
    running = "() => /running.*step 1\\/20/.test(document.querySelector('#train-progress')?.innerText || '')"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            for visit in ("open", "reload"):
                if visit == "open":
                    page.goto(live_server["url"], wait_until="domcontentloaded")
                else:
                    page.reload(wait_until="domcontentloaded")
                page.get_by_role("tab", name="Train").wait_for(state="visible", timeout=60_000)
                page.get_by_role("tab", name="Train").click()
                page.wait_for_function(running, timeout=60_000)
                assert name in page.locator("#train-progress").inner_text()
                page.locator("#train-loss canvas, #train-loss svg").first.wait_for(state="visible", timeout=15_000)
            page.locator("#train-cancel").click()
            page.wait_for_function(
                "() => /cancelled/.test(document.querySelector('#train-progress')?.innerText || '')", timeout=120_000)
        finally:
            browser.close()
    assert "cancelled" in job.result(timeout=60)[0] and "step 1/20" in job.result()[0]
    assert sorted((context.training_dir / name / "checkpoints").glob("*.pt"))
    assert not (context.lora_dir / f"{name}.safetensors").exists()
