"""The main flow in a real browser (Debian's Chromium driven by Playwright) against a live server and a real
worker: sign up, submit a code job, watch highlighted code appear without reloading, see how sure the model was
of each token, find it in the history."""
import re

import pytest
from playwright.sync_api import expect

from generation.confidence import mean_logprob
from generation.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_signs_up_submits_a_code_job_and_finds_it_in_the_history(page, live_server, worker, checkpoint):
    page.goto(f"{live_server.url}/accounts/signup/")
    page.fill("#id_username", "carol")
    page.fill("#id_password1", "a-long-passphrase-42")
    page.fill("#id_password2", "a-long-passphrase-42")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/new/$"))

    page.select_option("#id_task", "code")
    page.fill("#id_prompt", "Write a Python function that checks whether a number is prime.")
    page.click("details.advanced summary")
    page.fill("#id_max_tokens", "96")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    job_url = page.url

    # The page updates itself: no reload between "queued" and the result.
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=180_000)
    assert page.url == job_url
    expect(page.locator("#job-output .highlight").first).to_be_visible()
    expect(page.locator("#job-output .highlight").first).to_contain_text("def ")
    expect(page.locator("#stat-completion-tokens")).not_to_have_text("–")
    expect(page.locator("#cancel-form")).to_be_hidden()  # nothing left to cancel

    # How sure the model was: the worker kept each token's log-probability with 5 alternatives, and their mean.
    job = Job.objects.get(pk=int(job_url.rstrip("/").rsplit("/", 1)[1]))
    assert len(job.logprobs) == job.completion_tokens and job.mean_logprob == pytest.approx(mean_logprob(job.logprobs))
    page.click("#confidence-toggle")
    expect(page.locator("#confidence-toggle")).to_have_attribute("aria-pressed", "true")
    tokens = page.locator("#job-confidence .confidence-tokens .tok")
    expect(tokens).to_have_count(job.completion_tokens)
    tokens.nth(1).hover()
    expect(page.locator("#confidence-popup li")).to_have_count(5)
    page.locator("#confidence-toggle").focus()
    page.keyboard.press("Tab")
    expect(tokens.first).to_be_focused()
    expect(page.locator("#confidence-popup .popup-head")).to_contain_text("%")

    page.goto(f"{live_server.url}/jobs/")
    row = page.locator("tr", has_text="checks whether a number is prime")
    expect(row).to_have_count(1)
    row.get_by_role("link").first.click()
    assert page.url == job_url
