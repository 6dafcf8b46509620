"""The site's look in Chromium against the site under uvicorn (with its Content-Security-Policy): at 390 px no page
scrolls sideways, dark mode follows prefers-color-scheme, the 404 page has the navigation, every page passes
axe-core's checks (labels, landmarks, names, contrast: light and dark), and the account page's copy button and
revoke confirmation work.

Set LLMSITE_SCREENSHOTS=/some/folder to also save each page at 390 and 1280 px, light and dark."""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from generation import services
from generation.fleet import registry
from generation.models import ApiKey, Job
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.django_db(transaction=True)

AXE = "/static/generation/vendor/axe.min.js"  # served like any static file, so the page's CSP allows it
#: axe-core rules every page must pass (WCAG 2.1 A/AA and best practices, which hold the landmark rules).
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
AXE_REQUIRED = {"label", "landmark-one-main", "region", "button-name", "link-name", "color-contrast"}
SCREENSHOTS = os.environ.get("LLMSITE_SCREENSHOTS", "")
PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1280, "height": 900}
LONG_WORD = "https://example.com/" + "a-very-long-path-segment-" * 8

#: (name, path, signed in): {job} is the code job's id, {job_b} the id of the job it is compared with.
PAGES = [
    ("landing", "/", False),
    ("login", "/accounts/login/", False),
    ("signup", "/accounts/signup/", False),
    ("404", "/no/such/page/", False),
    ("new-job", "/jobs/new/", True),
    ("history", "/jobs/", True),
    ("job", "/jobs/{job}/", True),
    ("compare-form", "/compare/new/?from={job}", True),
    ("compare", "/compare/?a={job}&b={job_b}", True),
    ("account", "/accounts/", True),
    ("password", "/accounts/password/", True),
    ("404-signed-in", "/jobs/999999/", True),
]


@pytest.fixture
def site(web, owner, checkpoint, empty_redis) -> dict:
    """The site with a history worth looking at: jobs of every state and task, long words, an API key of each kind."""
    registry.publish(name="idle@test", holds={}, status={"resident": [], "loading": [], "running_jobs": 0})

    def job(**fields) -> Job:
        return Job.objects.create(owner=owner, checkpoint=checkpoint, max_tokens=64, **fields)

    code = job(task=Job.Task.CODE, status=Job.Status.SUCCEEDED, options={"language": "python"},
               prompt="Write a Python function that checks whether a number is prime, with a docstring and tests.",
               output="Here it is:\n\n```python\ndef is_prime(n: int) -> bool:\n    return n > 1 and all(n % d "
                      "for d in range(2, int(n ** 0.5) + 1))\n```\n", prompt_tokens=82, completion_tokens=31)
    job(task=Job.Task.QA, status=Job.Status.FAILED, prompt=f"What is at {LONG_WORD}?", error="time limit exceeded")
    job(task=Job.Task.SUMMARIZE, status=Job.Status.QUEUED, prompt="Summarize: " + "the quick brown fox " * 30)
    job(task=Job.Task.CHAT, source=Job.Source.API, status=Job.Status.SUCCEEDED, prompt="hello", output="Hi! " * 40,
        prompt_tokens=9, completion_tokens=160)
    # The code job again at another temperature, with a line longer than a phone and a table: the compare page.
    job_b = job(task=Job.Task.CODE, status=Job.Status.SUCCEEDED, options=code.options, prompt=code.prompt,
                temperature=0.9, seed=7, finish_reason="length", prompt_tokens=82, completion_tokens=64,
                output="Sure:\n\n```python\ndef is_prime(n):  # " + LONG_WORD + "\n    return n > 1\n```\n\n"
                       "| n | prime |\n| --- | --- |\n| 7 | yes |\n")
    services.api_key_create(owner=owner, name="laptop")
    old, _ = services.api_key_create(owner=owner, name="old script on the build server")
    services.api_key_revoke(key=old)
    return {"url": web.url, "job": code.pk, "job_b": job_b.pk}


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def context(browser: Browser, url: str, *, signed_in: bool, scheme: str = "light") -> BrowserContext:
    ctx = browser.new_context(viewport=PHONE, color_scheme=scheme)
    ctx.set_default_timeout(30_000)
    if signed_in:
        page = ctx.new_page()
        page.goto(f"{url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", "alice-password-1")
        page.click("main button[type=submit]")
        expect(page).to_have_url(re.compile(r"/jobs/new/$"))
        page.close()
    return ctx


def scroll_overflow(page: Page) -> int:
    """How many px the document is wider than the viewport (0 when nothing scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def axe_violations(page: Page) -> list[str]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(url=AXE)
    results = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS)
    ran = {rule["id"] for key in ("passes", "violations", "incomplete", "inapplicable") for rule in results[key]}
    assert AXE_REQUIRED <= ran, AXE_REQUIRED - ran
    return [f"{v['id']}: {v['help']} at {[node['target'] for node in v['nodes']][:3]}" for v in results["violations"]]


def screenshot(page: Page, name: str, scheme: str) -> None:
    if not SCREENSHOTS:
        return
    folder = Path(SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    for size in (PHONE, DESKTOP):
        page.set_viewport_size(size)
        page.screenshot(path=str(folder / f"{name}-{size['width']}-{scheme}.png"), full_page=True)
    page.set_viewport_size(PHONE)


def visit_every_page(site: dict, scheme: str) -> dict[str, list[str]]:
    """Each page at 390 px in `scheme`: the sideways overflow and axe's violations, by page (empty when fine)."""
    problems: dict[str, list[str]] = {}
    with chromium() as browser:
        contexts = {signed_in: context(browser, site["url"], signed_in=signed_in, scheme=scheme)
                    for signed_in in (False, True)}
        for name, path, signed_in in PAGES:
            page = contexts[signed_in].new_page()
            response = page.goto(site["url"] + path.format(**site))
            assert response is not None and response.status == (404 if name.startswith("404") else 200), name
            found = []
            if (overflow := scroll_overflow(page)) > 0:
                found.append(f"scrolls sideways by {overflow} px at 390 px")
            found += axe_violations(page)
            if scheme == "light":  # the wide layout too (the cards are tables again)
                page.set_viewport_size(DESKTOP)
                found += [f"at 1280 px: {v}" for v in axe_violations(page)]
                page.set_viewport_size(PHONE)
            screenshot(page, name, scheme)
            if found:
                problems[name] = found
            page.close()
    return problems


def report(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"{page}: {problem}" for page, found in problems.items() for problem in found)


def test_no_page_scrolls_sideways_at_390_px_and_every_page_passes_axe(site):
    problems = visit_every_page(site, "light")
    assert not problems, report(problems)


def test_dark_mode_follows_the_system_and_keeps_its_contrast(site):
    problems = visit_every_page(site, "dark")
    assert not problems, report(problems)
    with chromium() as browser:
        for scheme, dark in (("dark", True), ("light", False)):
            page = context(browser, site["url"], signed_in=False, scheme=scheme).new_page()
            page.goto(site["url"] + "/")
            rgb = page.evaluate("getComputedStyle(document.body).backgroundColor")
            red, green, blue = (int(n) for n in re.findall(r"\d+", rgb)[:3])
            luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
            assert (luminance < 60) is dark and (luminance > 200) is not dark, (scheme, rgb)


def test_the_404_page_has_the_navigation_and_the_header_fits_a_phone(site):
    with chromium() as browser:
        page = context(browser, site["url"], signed_in=True).new_page()
        response = page.goto(site["url"] + "/no/such/page/")
        assert response.status == 404
        expect(page.locator("h1")).to_have_text("Page not found")
        nav = page.get_by_role("navigation", name="Main")
        for link in ("New job", "History", "API keys"):
            expect(nav.get_by_role("link", name=link)).to_be_visible()
        # The links sit beside or below the brand, never over it.
        brand = page.locator(".topbar .brand").bounding_box()
        for box in (nav.locator("a, button").nth(i).bounding_box() for i in range(nav.locator("a, button").count())):
            overlaps = (box["x"] < brand["x"] + brand["width"] and brand["x"] < box["x"] + box["width"]
                        and box["y"] < brand["y"] + brand["height"] and brand["y"] < box["y"] + box["height"])
            assert not overlaps, box
        # The skip link comes first and moves the focus to the content.
        page.keyboard.press("Tab")
        expect(page.locator(".skip-link")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("main")).to_be_focused()


def test_the_key_page_copies_the_new_key_and_asks_before_revoking(site):
    with chromium() as browser:
        ctx = context(browser, site["url"], signed_in=True)
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=site["url"])
        page = ctx.new_page()
        page.goto(site["url"] + "/accounts/")
        page.fill("#id_name", "phone")
        page.click("#key-form button[type=submit]")
        secret = page.locator("#new-key-secret").inner_text()
        assert secret.startswith(ApiKey.PREFIX)
        page.click("#copy-key")
        expect(page.locator('[data-copied-for="new-key-secret"]')).to_have_text("Copied.")
        assert page.evaluate("navigator.clipboard.readText()") == secret

        key = ApiKey.objects.get(name="phone")
        row = page.locator(f'tr[data-key-id="{key.pk}"]')
        page.once("dialog", lambda dialog: dialog.dismiss())
        row.get_by_role("button", name="Revoke phone").click()
        page.wait_for_timeout(300)
        key.refresh_from_db()
        assert key.is_active  # dismissed: nothing happened
        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name="Revoke phone").click()
        expect(page.locator(".message.success")).to_contain_text("Key phone revoked")
        key.refresh_from_db()
        assert not key.is_active
        page.locator(f'tr[data-key-id="{key.pk}"]').get_by_role("button", name="Remove phone").click()
        expect(page.locator(".message.success")).to_contain_text("Key phone removed.")
        assert not ApiKey.objects.filter(pk=key.pk).exists()


#: What is wrong with the table `selector` (JavaScript, given the selector): a table wider than a box around it
#: that clips or scrolls (columns cut off or out of sight), a cell whose content overflows it, a header whose text
#: leaves its cell or touches the next header's.
ADMIN_TABLE_PROBLEMS = """selector => {
  const table = document.querySelector(selector), found = [];
  for (let box = table.parentElement; box && box !== document.body; box = box.parentElement) {
    const hidden = box.scrollWidth - box.clientWidth;
    if (getComputedStyle(box).overflowX !== 'visible' && hidden > 1) {
      found.push(`${box.className || box.tagName} scrolls sideways by ${hidden} px`);
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth) found.push('the page scrolls sideways');
  for (const cell of table.querySelectorAll('th, td')) {
    if (cell.scrollWidth > cell.clientWidth + 1) found.push(`cut: ${cell.textContent.trim()}`);
  }
  let previousRight = -Infinity;
  for (const cell of table.querySelectorAll('thead th')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), box = cell.getBoundingClientRect();
    let left = Infinity, right = -Infinity;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.textContent.trim()) continue;
      const range = document.createRange(); range.selectNodeContents(node);
      for (const rect of range.getClientRects()) {
        left = Math.min(left, rect.left); right = Math.max(right, rect.right);
      }
    }
    if (right < left) continue;
    const name = cell.textContent.trim();
    if (left < box.left - 1 || right > box.right + 1) found.push(`header outside its cell: ${name}`);
    if (left < previousRight + 8) found.push(`header touches the previous one: ${name}`);
    previousRight = right;
  }
  return found;
}"""


def test_the_admin_tables_show_every_header_and_cell_whole(site, staff, checkpoint):
    """The Workers table and the checkpoint list: no header runs into the next one and no cell is cut off."""
    registry.publish(name="celery@gpu-host-with-a-long-name.example.internal", holds={checkpoint.pk: 98 * 1024**2},
                     status={"resident": [checkpoint.pk], "loading": [],
                             "memory_used_bytes": 98 * 1024**2, "memory_budget_bytes": 8 * 1024**3,
                             "running_jobs": 3, "loads": 5, "evictions": 1, "heartbeat_at": time.time()})
    with chromium() as browser:
        ctx = browser.new_context(viewport=DESKTOP)
        page = ctx.new_page()
        page.goto(f"{site['url']}/admin/login/?next=/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "root-password-1")
        page.click("input[type=submit]")
        for name, path, table in (("admin-workers", "/admin/workers/", "#workers table"),
                                  ("admin-checkpoints", "/admin/modelzoo/checkpoint/", "#result_list")):
            page.goto(site["url"] + path)
            expect(page.locator(f"{table} tbody tr").first).to_contain_text(checkpoint.name.split("-")[0])
            for width in (1280, 1024):
                page.set_viewport_size({"width": width, "height": 900})
                if SCREENSHOTS:
                    page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}-{width}-light.png"), full_page=True)
                problems = page.evaluate(ADMIN_TABLE_PROBLEMS, table)
                assert problems == [], (name, width, problems)
            page.set_viewport_size(DESKTOP)
            if SCREENSHOTS:
                page.emulate_media(color_scheme="dark")
                page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}-1280-dark.png"), full_page=True)
                page.emulate_media(color_scheme="light")
