"""Shared pieces of the browser tests: Debian's chromium through Playwright, never a downloaded browser."""

from __future__ import annotations

import re
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
