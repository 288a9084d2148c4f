"""Shared pieces of the browser tests: Debian's chromium through Playwright, never a downloaded browser."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
# Gradio's ImageEditor draws with WebGL: without a GPU, chromium needs its software renderer.
WEBGL_LAUNCH_ARGS = [arg for arg in LAUNCH_ARGS if arg != "--disable-gpu"] + ["--use-angle=swiftshader",
                                                                              "--enable-unsafe-swiftshader"]


def playwright_or_skip():
    """Playwright's sync API, or a module-level skip when it or Debian's chromium is missing."""
    api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (python launch.py --test installs it)",
                    allow_module_level=True)
    return api


@contextmanager
def open_app(playwright_api, url: str, args: list[str] | None = None, width: int = 1280, height: int = 1000):
    """A chromium page on Easel at ``url``, once the txt2img tab is there; the browser closes after."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=LAUNCH_ARGS if args is None else args)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#txt2img-prompt textarea").wait_for(state="visible", timeout=60_000)
            yield page
        finally:
            browser.close()


def pick(page, elem_id: str, text: str) -> None:
    """Choose ``text`` in the Gradio dropdown ``#elem_id``."""
    field = page.locator(f"#{elem_id} input").first
    field.click()
    field.fill(text)
    page.get_by_role("option", name=re.compile(re.escape(text))).first.click()


def set_number(page, elem_id: str, value: str) -> None:
    """Type ``value`` into the number box of the Gradio slider/number ``#elem_id``."""
    number = page.locator(f"#{elem_id} input[type=number]")
    number.fill(value)
    number.press("Enter")
