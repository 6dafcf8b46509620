"""The job page's confidence view in Chromium: the Confidence button (aria-pressed) shows the answer as tokens
shaded by probability, and a token's popup (its probability and the alternatives) opens on hover and when Tab
reaches it; model text stays text; nothing scrolls sideways at 390 px. The history sorts the least sure first.
With LLMSITE_SCREENSHOTS set it saves the job page's view and the history at 390 and 1280 px, light and dark.
(A job run by the real worker is opened in its confidence view by test_main_flow.py.)"""
from __future__ import annotations

import math

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from generation.confidence import mean_logprob
from generation.models import Job
from tests.browser.pages import browser_page, sign_in, snap, watch_violations

pytestmark = pytest.mark.django_db(transaction=True)


def lp(p: float) -> float:
    return math.log(p)


#: An answer of eight tokens as the runner stores them, one in each shade, a line break, and HTML as text.
ENTRIES = [
    ["The", lp(0.97), [["The", lp(0.97)], ["A", lp(0.02)]]],
    [" capital", lp(0.81), [[" capital", lp(0.81)], [" city", lp(0.12)], [" main", lp(0.03)]]],
    [" is", lp(0.62), [[" is", lp(0.62)], [" was", lp(0.30)]]],
    [" <b>Paris</b>", lp(0.41), [[" <b>Paris</b>", lp(0.41)], [" Lyon", lp(0.33)], [" Nice", lp(0.1)]]],
    [".", lp(0.12), [["!", lp(0.55)], [".", lp(0.12)]]],
    ["\n", lp(0.9), [["\n", lp(0.9)]]],
    ["It", lp(0.0004), [["The", lp(0.6)], ["This", lp(0.2)], ["Its", lp(0.1)], ["Paris", lp(0.05)],
                        ["Yes", lp(0.01)]]],
    [" rains", lp(0.999), [[" rains", lp(0.999)]]],
]


def axe_violations(page: Page) -> list[str]:
    """axe-core's WCAG 2.1 A/AA findings on the page as it is (shades' contrast included), as test_look_and_feel
    runs it on every page."""
    page.add_script_tag(url="/static/generation/vendor/axe.min.js")
    results = page.evaluate("axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', "
                            "'wcag21aa', 'best-practice']}})")
    return [f"{v['id']}: {v['help']} at {[node['target'] for node in v['nodes']][:3]}" for v in results["violations"]]


@pytest.fixture
def finished(owner, checkpoint) -> Job:
    job = Job.objects.create(owner=owner, task=Job.Task.QA, prompt="What is the capital of France?",
                             checkpoint=checkpoint, status=Job.Status.SUCCEEDED, finish_reason="stop",
                             output="".join(entry[0] for entry in ENTRIES), prompt_tokens=30,
                             completion_tokens=len(ENTRIES), attempts=1, batch_size=1, decode_s=0.4,
                             options={"logprobs": 5}, logprobs=ENTRIES, mean_logprob=mean_logprob(ENTRIES))
    Job.objects.filter(pk=job.pk).update(started_at=timezone.now(), first_token_at=timezone.now(),
                                         finished_at=timezone.now())
    return job


def open_view(page: Page, url: str) -> None:
    page.goto(url)
    button = page.locator("#confidence-toggle")
    expect(button).to_have_attribute("aria-pressed", "false")
    button.click()
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#job-confidence .confidence-tokens .tok")).to_have_count(len(ENTRIES))


def test_the_confidence_view_shows_alternatives_on_hover_and_on_keyboard_focus(live_server, owner, finished):
    url = f"{live_server.url}/jobs/{finished.pk}/"
    with browser_page() as page:
        violations = watch_violations(page)
        sign_in(page, live_server.url)
        page.goto(url)
        expect(page.locator("#stat-confidence")).to_have_text(f"{round(math.exp(finished.mean_logprob) * 100)}%")
        expect(page.locator("#job-confidence")).to_be_hidden()
        open_view(page, url)
        expect(page.locator("#job-output")).to_be_hidden()
        tokens = page.locator("#job-confidence .confidence-tokens .tok")
        assert [tokens.nth(i).get_attribute("class") for i in range(5)] == [
            "tok tok-0", "tok tok-1", "tok tok-2", "tok tok-3", "tok tok-4"]
        assert tokens.nth(3).inner_text() == " <b>Paris</b>"  # text, not markup
        assert page.locator("#job-confidence b").count() == 0
        expect(tokens.nth(5)).to_have_text("\u21b5\n")  # a line break is marked

        popup = page.locator("#confidence-popup")
        tokens.nth(1).hover()
        expect(popup).to_be_visible()
        expect(popup.locator(".popup-head")).to_have_text("\u201c capital\u201d 81%")
        expect(popup.locator("li")).to_have_text(["\u201c capital\u201d81% (chosen)", "\u201c city\u201d12%",
                                                  "\u201c main\u201d3.0%"])
        expect(tokens.nth(1)).to_have_attribute("aria-describedby", "confidence-popup")

        # A sampled token that was not the likeliest: the popup says so.
        tokens.nth(4).hover()
        expect(popup.locator(".popup-head")).to_have_text("\u201c.\u201d 12%")
        expect(popup.locator("li").first).to_have_text("\u201c!\u201d55%")
        expect(popup.locator("li.chosen")).to_have_text("\u201c.\u201d12% (chosen)")

        # The keyboard: from the button, Tab reaches the first token, then the next; Escape closes the popup.
        page.mouse.move(0, 0)
        expect(popup).to_be_hidden()
        page.locator("#confidence-toggle").focus()
        page.keyboard.press("Tab")
        expect(tokens.nth(0)).to_be_focused()
        expect(popup).to_be_visible()
        expect(popup.locator(".popup-head")).to_have_text("\u201cThe\u201d 97%")
        page.keyboard.press("Tab")
        expect(tokens.nth(1)).to_be_focused()
        expect(popup.locator(".popup-head")).to_have_text("\u201c capital\u201d 81%")
        for _ in range(5):
            page.keyboard.press("Tab")
        expect(tokens.nth(6)).to_be_focused()
        expect(popup.locator(".popup-head")).to_have_text("\u201cIt\u201d <0.1%")
        expect(popup.locator("li")).to_have_count(5)
        page.keyboard.press("Escape")
        expect(popup).to_be_hidden()
        expect(tokens.nth(6)).not_to_have_attribute("aria-describedby", "confidence-popup")

        page.locator("#confidence-toggle").click()
        expect(page.locator("#confidence-toggle")).to_have_attribute("aria-pressed", "false")
        expect(page.locator("#job-output")).to_be_visible()
        expect(page.locator("#job-confidence")).to_be_hidden()
        assert violations == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_view_fits_a_phone_and_the_history_sorts_the_least_sure_first(live_server, owner, checkpoint, finished,
                                                                            scheme):
    sure = Job.objects.create(owner=owner, task=Job.Task.CODE, prompt="Write hello world in Python.",
                              checkpoint=checkpoint, status=Job.Status.SUCCEEDED, output='print("hello")',
                              options={"language": "python", "logprobs": 5}, mean_logprob=lp(0.96),
                              logprobs=[["print", lp(0.96), []]], completion_tokens=1, prompt_tokens=20)
    Job.objects.create(owner=owner, task=Job.Task.CHAT, prompt="hi", checkpoint=checkpoint, source=Job.Source.API,
                       status=Job.Status.SUCCEEDED, output="Hello!", completion_tokens=3, prompt_tokens=9)
    for width in (390, 1280):
        with browser_page(width=width, height=844 if width == 390 else 900, color_scheme=scheme) as page:
            sign_in(page, live_server.url)
            open_view(page, f"{live_server.url}/jobs/{finished.pk}/")
            tokens = page.locator("#job-confidence .confidence-tokens .tok")
            tokens.nth(len(ENTRIES) - 1).hover()  # the last token, at the right end of its line
            expect(page.locator("#confidence-popup")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
            box, panel = page.locator("#confidence-popup").bounding_box(), page.locator("#job-confidence").bounding_box()
            assert panel["x"] - 1 <= box["x"] and box["x"] + box["width"] <= panel["x"] + panel["width"] + 1
            tokens.nth(6).hover()
            snap(page, f"job-confidence-{width}-{scheme}")
            assert axe_violations(page) == []

            page.goto(f"{live_server.url}/jobs/?sort=least-sure")
            rows = page.locator("tr.job-row")
            expect(rows).to_have_count(3)
            assert [rows.nth(i).get_attribute("data-job-id") for i in range(2)] == [str(finished.pk), str(sure.pk)]
            expect(rows.nth(1).locator(".confidence-cell")).to_contain_text("96%")
            assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
            snap(page, f"history-least-sure-{width}-{scheme}")
            page.select_option("#filter-confidence", "below-90")
            page.click("form.filters button[type=submit]")
            expect(rows).to_have_count(1)
            expect(page.locator("#filter-sort")).to_have_value("least-sure")
