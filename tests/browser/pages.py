"""Helpers of the job-page and conversation browser tests: a Chromium page with a viewport, a colour scheme and
clipboard permissions; signing in; waiting for the worker's model; screenshots when LLMSITE_SCREENSHOTS names a
folder (`LLMSITE_SCREENSHOTS=/tmp/screens pytest tests/browser/test_job_page.py`)."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS

#: The widths the pages are checked at: a phone and a desktop.
WIDTHS = (390, 1280)


@contextmanager
def browser_page(*, width: int = 1280, height: int = 900, color_scheme: str = "light", clipboard: bool = False,
                 timeout_ms: int = 60_000) -> Iterator[Page]:
    """A page in a fresh headless Chromium; with `clipboard`, the page may read and write the clipboard."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme)
        if clipboard:
            context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        try:
            yield page
        finally:
            browser.close()


def sign_in(page: Page, url: str, username: str = "alice", password: str = "alice-password-1") -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main button[type=submit]")
    page.wait_for_url("**/jobs/new/")


def wait_until_resident(worker, *, timeout_s: float = 180) -> None:
    """The worker holds the model, so a job's time limit is not spent loading it."""
    deadline = time.monotonic() + timeout_s
    while "is resident" not in worker.log():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)


def watch_violations(page: Page) -> list[str]:
    """Content-Security-Policy violations the page reports (see tests/browser/test_csp.py)."""
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text
            else None)
    return seen


def screenshots_dir() -> Path | None:
    folder = os.environ.get("LLMSITE_SCREENSHOTS")
    if not folder:
        return None
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def snap(page: Page, name: str, *, full_page: bool = True) -> None:
    """A screenshot named `name`.png when screenshots are asked for; nothing otherwise."""
    folder = screenshots_dir()
    if folder is not None:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)
