"""What a person clicks: headless Debian chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, playwright_or_skip
from webui.demo_model.judge import judge

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
