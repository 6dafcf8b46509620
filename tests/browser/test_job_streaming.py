"""The job page in Chromium against the site under uvicorn: text grows while the job runs, Stop ends it."""
import pytest
from playwright.sync_api import expect

from generation import services
from generation.models import Job
from tests.browser.chromium import chromium_page

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_shows_text_growing_and_stops_a_running_job_keeping_its_text(checkpoint, web, worker, owner):
    deadline_log = 180
    import time

    start = time.monotonic()
    while "is resident" not in worker.log():
        assert time.monotonic() - start < deadline_log
        time.sleep(0.2)
    with chromium_page(timeout_ms=60_000) as page:
        page.goto(f"{web.url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", "alice-password-1")
        page.click("button[type=submit]")
        page.wait_for_url("**/jobs/new/")

        job = services.job_create(owner=owner, task="qa", prompt="Tell me a long story about a dragon.",
                                  checkpoint=checkpoint, max_tokens=512, temperature=0.0)
        page.goto(f"{web.url}/jobs/{job.pk}/")
        output = page.locator("#job-output")
        expect(output).not_to_have_text("", timeout=120_000)
        first = output.inner_text()
        page.wait_for_function("n => document.getElementById('job-output').textContent.length > n", arg=len(first))
        assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING  # it grew before the job ended
        expect(page.locator("#job-status")).to_have_text("Running")

        page.click("#stop-button")
        expect(page.locator("#job-status")).to_have_text("Cancelled")
        job.refresh_from_db()
        deadline = time.monotonic() + 30
        while job.finish_reason != "cancelled":
            assert time.monotonic() < deadline
            time.sleep(0.1)
            job.refresh_from_db()
        assert job.output and job.completion_tokens < 512
        expect(output).to_contain_text(job.output.strip()[:20])
        expect(page.locator("#cancel-form")).to_be_hidden()
