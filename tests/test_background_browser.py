"""A person replaces a background: headless Debian chromium through Playwright, tiny models."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, pick, playwright_or_skip

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()


@contextmanager
def background_page(url, upload, steps):
    """A page on the Background tab with ``upload`` in, both prompts typed, the tiny detector,
    boxes-only segmentation, ``steps`` steps and a 256 px working size."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Background").wait_for(state="visible", timeout=60_000)
            page.get_by_role("tab", name="Background").click()
            page.locator("#background-input input[type=file]").set_input_files(str(upload))
            page.locator("#background-input img").first.wait_for(state="visible", timeout=30_000)
            page.locator("#background-subject textarea").fill("the square")
            page.locator("#background-prompt textarea").fill("a sunny beach")
            pick(page, "background-detector", "tiny Grounding DINO")
            pick(page, "background-segmenter", "Boxes only")
            for slider, value in (("background-steps", str(steps)), ("background-work-side", "256")):
                number = page.locator(f"#{slider} input[type=number]")
                number.fill(value)
                number.press("Enter")
            yield page
        finally:
            browser.close()


def replace_and_read_info(page) -> str:
    """Click Replace, wait until the status says how it ended, require "Done" and a result
    image, and return the result's infotext."""
    page.locator("#background-replace").click()
    page.wait_for_function(
        "() => (document.querySelector('#background-status')?.innerText || '').match(/Done|Nothing|No |rror/)",
        timeout=180_000)
    status = page.locator("#background-status").inner_text()
    assert "Done" in status, status
    page.locator("#background-gallery img").first.wait_for(state="visible", timeout=30_000)
    return page.locator("#background-info textarea").input_value()


def test_upload_type_prompts_and_see_the_new_background(live_server, tmp_path):
    rng = np.random.default_rng(3)
    data = np.zeros((96, 128, 4), np.uint8)
    data[..., :3] = (30, 60, 200)
    data[24:72, 40:96, :3] = rng.integers(100, 256, (48, 56, 3), dtype=np.uint8)
    data[24:72, 40:96, 3] = 255     # a cut-out: transparent around the subject
    upload = tmp_path / "cutout.png"
    Image.fromarray(data, "RGBA").save(upload)

    with background_page(live_server["url"], upload, steps=3) as page:
        info = replace_and_read_info(page)
        assert "a sunny beach" in info and "Steps: 3" in info and "Subject prompt: the square" in info
        page.screenshot(path=str(tmp_path / "background.png"), full_page=True)


def test_step_by_step_detect_pick_mask_and_replace(live_server, tmp_path):
    data = np.zeros((96, 128, 3), np.uint8)
    data[:] = (30, 60, 200)
    data[24:72, 40:96] = (220, 30, 30)
    upload = tmp_path / "photo.png"
    Image.fromarray(data).save(upload)

    with background_page(live_server["url"], upload, steps=2) as page:
        page.locator("#background-detect").click()
        page.locator("#background-keep label").first.wait_for(state="visible", timeout=60_000)
        labels = page.locator("#background-keep label")
        assert labels.count() >= 1 and labels.first.inner_text().startswith("#0")
        page.locator("#background-boxes img").first.wait_for(state="visible", timeout=30_000)
        if labels.count() > 1:
            labels.nth(1).click()          # untick one detection
        page.locator("#background-make-mask").click()
        page.wait_for_function(
            "() => (document.querySelector('#background-status')?.innerText || '').includes('Mask covers')",
            timeout=60_000)
        page.locator("#background-mask-preview img").first.wait_for(state="visible", timeout=30_000)
        info = replace_and_read_info(page)
        assert "Steps: 2" in info
        page.screenshot(path=str(tmp_path / "background-steps.png"), full_page=True)


def test_offline_demo_keep_the_red_circle_and_paint_the_background_green(live_server, tmp_path):
    """Offline, end to end with meaning: the demo detector and segmenter find "the red circle" on a demo
    image, the demo model repaints the rest, and the judged result keeps a red circle on green."""
    from tools.demo_model.judge import foreground_mask, judge
    from tools.demo_model.shapes import ShapeSpec, render
    from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

    if not (DEMO_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("the demo model is not shipped")
    import io

    from PIL import ImageFilter

    original = render(ShapeSpec(shape="circle", colour="red", background="blue", size="large"), 128)
    upload = tmp_path / "demo.png"
    original.save(upload)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(live_server["url"], wait_until="domcontentloaded")
            page.get_by_role("tab", name="Background").wait_for(state="visible", timeout=60_000)
            page.get_by_role("tab", name="Background").click()
            page.locator("#background-input input[type=file]").set_input_files(str(upload))
            page.locator("#background-input img").first.wait_for(state="visible", timeout=30_000)
            page.locator("#background-subject textarea").fill("the red circle")
            page.locator("#background-prompt textarea").fill("a large red circle on a green background")
            pick(page, "background-detector", "shapes (demo")
            pick(page, "background-segmenter", "shapes (demo")
            pick(page, "background-model", DEMO_MODEL_NAME)
            pick(page, "background-sampler", "Euler")
            for slider, value in (("background-steps", "20"), ("background-work-side", "128"),
                                  ("background-cfg", "5")):
                number = page.locator(f"#{slider} input[type=number]")
                number.fill(value)
                number.press("Enter")
            page.locator("#background-seed input").first.fill("1")
            page.locator("#background-detect").click()
            page.locator("#background-keep label").first.wait_for(state="visible", timeout=60_000)
            labels = page.locator("#background-keep label")
            assert labels.count() == 1 and "large red circle" in labels.first.inner_text()
            info = replace_and_read_info(page)
            assert "Detector: shapes-demo" in info and "Segmenter: shapes-demo" in info, info
            served = page.request.get(page.locator("#background-gallery img").first.get_attribute("src"))
            result = Image.open(io.BytesIO(served.body())).convert("RGB")
            page.screenshot(path=str(tmp_path / "background-demo.png"), full_page=True)
        finally:
            browser.close()
    verdict = judge(result)
    assert (verdict.colour, verdict.shape, verdict.background) == ("red", "circle", "green"), verdict
    inside = foreground_mask(original)
    core = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(9))) > 0
    assert core.sum() > 5000  # well inside the circle
    assert np.array_equal(np.asarray(result)[core], np.asarray(original)[core])  # the circle is untouched
