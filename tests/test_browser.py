"""What a person clicks: headless Debian chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import io
import string

import numpy as np
import pytest
import torch
from PIL import Image

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, pick, playwright_or_skip, set_number
from tools.demo_model.judge import judge

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()


@pytest.fixture(scope="module")
def page(live_server, tmp_path_factory):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(live_server["url"], wait_until="domcontentloaded")
        page.locator("#txt2img-prompt textarea").wait_for(state="visible", timeout=60_000)
        yield page
        browser.close()


def test_type_a_prompt_click_generate_and_see_an_image(page, tmp_path):
    # Offline with nothing configured, the demo model is picked, labelled, and sets its native size.
    assert "offline demo model" in page.content()
    assert page.locator("#txt2img-width input[type=number]").input_value() == "128"
    page.locator("#txt2img-prompt textarea").fill("a large red circle on a blue background")
    for slider, value in (("steps", "20"), ("width", "128"), ("height", "128")):
        number = page.locator(f"#txt2img-{slider} input[type=number]")
        number.fill(value)
        number.press("Enter")
    page.locator("#txt2img-generate").click()
    image = page.locator("#txt2img-gallery img").first
    image.wait_for(state="visible", timeout=180_000)
    assert page.locator("#txt2img-gallery img").count() >= 1
    page.wait_for_function(
        "() => (document.querySelector('#txt2img-progress')?.innerText || '').includes('image(s) in')",
        timeout=60_000,
    )
    info = page.locator("#txt2img-info textarea").input_value()
    assert "Steps: 20" in info and "Size: 128x128" in info and "Model: easel-shapes" in info
    served = page.request.get(image.get_attribute("src"))
    verdict = judge(Image.open(io.BytesIO(served.body())))
    assert (verdict.colour, verdict.background) == ("red", "blue"), verdict  # it drew what was asked
    page.screenshot(path=str(tmp_path / "txt2img.png"), full_page=True)


def test_extensions_tab_shows_the_builtins(page):
    page.get_by_role("tab", name="Extensions").click()
    table = page.locator("#extensions-table")
    table.wait_for(state="visible", timeout=30_000)
    assert "txt2img" in table.inner_text()
    # the Status column (fifth: name, version, API, source, status) in plain words: no emoji, which is a
    # box without an emoji font
    statuses = page.locator("#extensions-table [role=gridcell][data-col=\"4\"]").all_inner_texts()
    assert statuses and {status.strip() for status in statuses} <= {"loaded", "failed", "disabled"}, statuses
    assert all(set(status) <= set(string.printable) for status in statuses)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU reasons")
def test_settings_tab_says_each_reason_once(page):
    page.get_by_role("tab", name="Settings").click()
    page.get_by_text("Apply settings").wait_for(state="visible", timeout=30_000)
    text = page.locator("body").inner_text()
    assert text.count("offload needs a GPU") == 1, text.count("offload needs a GPU")
    assert "model, sequential, group-block, group-leaf, auto — offload needs a GPU" in text
    assert text.count("bitsandbytes needs CUDA") == 1


def _fill_txt2img(page, prompt: str, steps: int, side: int, seed: int):
    """Open txt2img and set its prompt, steps, square size and seed; returns the seed box."""
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img-prompt textarea").fill(prompt)
    for slider, value in (("steps", steps), ("width", side), ("height", side)):
        set_number(page, f"txt2img-{slider}", str(value))
    seed_box = page.locator("#txt2img-seed input")
    seed_box.fill(str(seed))
    seed_box.press("Enter")
    return seed_box


def _generate_and_read_png(page) -> bytes:
    """Click Generate, wait for a new first image in txt2img's gallery (not the one already
    shown) and return its bytes as the server serves them."""
    images = page.locator("#txt2img-gallery img")
    before = images.first.get_attribute("src") if images.count() else ""
    page.locator("#txt2img-generate").click()
    page.wait_for_function("(before) => { const img = document.querySelector('#txt2img-gallery img');"
                           " return img && img.src && img.src !== before && !img.src.endsWith(before || '#'); }",
                           arg=before or "", timeout=180_000)
    return page.request.get(images.first.get_attribute("src")).body()


def test_png_info_round_trip_draws_the_same_image(page, tmp_path):
    """Generate, drop the PNG on PNG Info, send it to txt2img (over changed fields), generate again."""
    seed = _fill_txt2img(page, "a small green square on a yellow background on the left", steps=12, side=128,
                         seed=4242)
    first = _generate_and_read_png(page)
    dropped = tmp_path / "dropped.png"
    dropped.write_bytes(first)
    assert "Seed: 4242" in (Image.open(dropped).text.get("parameters") or "")  # the served PNG keeps its chunk

    # change what the send must restore; picking a model sets its native size (512 for tiny)
    pick(page, "txt2img-model", "tiny")
    page.wait_for_function("() => document.querySelector('#txt2img-width input[type=number]')?.value === '512'",
                           timeout=30_000)
    page.locator("#txt2img-prompt textarea").fill("a large blue circle on a red background")
    set_number(page, "txt2img-steps", "3")
    seed.fill("-1")
    seed.press("Enter")

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#png-info-file input[type=file]").set_input_files(str(dropped))
    page.wait_for_function(
        "() => (document.querySelector('#png-info-status')?.innerText || '').includes('Send to txt2img sets')",
        timeout=60_000)
    status = page.locator("#png-info-status").inner_text()
    assert status.startswith("PNG, 128x128, RGB") and "model" in status, status
    assert page.locator("#png-info-prompt textarea").input_value() == \
        "a small green square on a yellow background on the left"
    fields = page.locator("#png-info-fields").inner_text()
    assert "Seed" in fields and "4242" in fields and "easel-shapes" in fields
    page.locator("#png-info-send-txt2img").click()

    prompt = page.locator("#txt2img-prompt textarea")
    prompt.wait_for(state="visible", timeout=30_000)  # the send switched to the txt2img tab
    page.wait_for_function(
        "() => document.querySelector('#txt2img-prompt textarea')?.value.includes('green square')", timeout=30_000)
    assert page.locator("#txt2img-steps input[type=number]").input_value() == "12"
    assert seed.input_value() == "4242"
    # the sent model (the demo model) is back, and the sent size stays (not the old model's 512)
    assert "easel-shapes" in page.locator("#txt2img-model input").first.input_value()
    assert page.locator("#txt2img-width input[type=number]").input_value() == "128"
    assert page.locator("#txt2img-height input[type=number]").input_value() == "128"
    second = _generate_and_read_png(page)
    a = np.asarray(Image.open(io.BytesIO(first)).convert("RGB"))
    b = np.asarray(Image.open(io.BytesIO(second)).convert("RGB"))
    assert np.array_equal(a, b), np.abs(a.astype(int) - b.astype(int)).max()
    verdict = judge(Image.open(io.BytesIO(second)))
    assert (verdict.colour, verdict.background) == ("green", "yellow"), verdict


def test_send_to_png_info_reads_the_generated_image(page):
    """The gallery's "Send to PNG Info" opens PNG Info with the image's own parameters (after the PNG Info round
    trip: it leaves a file in PNG Info's drop zone)."""
    _fill_txt2img(page, "a small red square, sent to png info", steps=2, side=64, seed=777)
    _generate_and_read_png(page)
    page.locator("#txt2img-send-png-info").click()
    page.wait_for_function(  # PNG Info may still show the round trip's file: wait for this image's prompt
        "() => document.querySelector('#png-info-prompt textarea')?.value === 'a small red square, sent to png info'",
        timeout=60_000)
    assert "Send to txt2img sets" in page.locator("#png-info-status").inner_text()
    fields = page.locator("#png-info-fields").inner_text()
    assert "777" in fields and "64x64" in fields


def test_an_extension_control_set_in_the_page_reaches_the_job(page):
    """The page gathers the extension controls into the endpoint's one ``extras`` dict: a LoRA picked in
    txt2img's LoRA control reaches the LoRA extension, which refuses a name that is not installed."""
    page.get_by_role("tab", name="txt2img").first.click()
    names = page.locator("#txt2img-lora-names input").first
    names.click()
    names.fill("no_such_lora")
    names.press("Enter")
    page.locator("#txt2img-generate").click()
    page.get_by_text("LoRA not found").first.wait_for(state="visible", timeout=120_000)
    assert "no_such_lora" in page.content()
