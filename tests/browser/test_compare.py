"""Compare in Chromium against the site under uvicorn and a real worker with the bundled model: from the new-job
form, one question with two settings becomes two jobs whose answers stream into two columns side by side (one
under the other on a phone), each with its settings, token counts and why it ended."""
import re

import pytest
from playwright.sync_api import expect

from generation.models import Job
from tests.browser.pages import browser_page, sign_in, snap, wait_until_resident, watch_violations

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_settings_answer_one_question_side_by_side(web, checkpoint, worker, owner):
    wait_until_resident(worker)
    with browser_page(timeout_ms=30_000) as page:
        violations = watch_violations(page)
        sign_in(page, web.url)
        page.click("#start-compare")
        expect(page).to_have_url(re.compile(r"/compare/new/$"))
        page.select_option("#id_task", "qa")
        expect(page.locator("#id_context")).to_be_visible()
        expect(page.locator("#id_system_prompt")).to_be_hidden()  # chat only
        page.fill("#id_prompt", "What is the capital of France?")
        page.fill("#id_temperature_a", "0")
        page.fill("#id_max_tokens_a", "12")
        page.fill("#id_temperature_b", "0.9")
        page.fill("#id_max_tokens_b", "20")
        page.fill("#id_seed", "5")
        page.click("#compare-form button[type=submit]")
        expect(page).to_have_url(re.compile(r"/compare/\?a=\d+&b=\d+$"))

        a, b = Job.objects.filter(owner=owner).order_by("id")
        columns = {"a": page.locator("#column-a"), "b": page.locator("#column-b")}
        for column in columns.values():
            expect(column.locator("[data-part=status]")).to_have_text("Succeeded", timeout=120_000)
            expect(column.locator("[data-part=output]")).not_to_have_text("")
            expect(column.locator("[data-part=cancel]")).to_be_hidden()
        a.refresh_from_db()
        b.refresh_from_db()
        assert (a.temperature, a.max_tokens, b.temperature, b.max_tokens, a.seed, b.seed) == (0.0, 12, 0.9, 20, 5, 5)
        for job, column in ((a, columns["a"]), (b, columns["b"])):
            assert job.status == Job.Status.SUCCEEDED and job.output
            expect(column.locator("[data-part=output]")).to_contain_text(job.output.strip()[:12])
            expect(column.locator("[data-stat=completion-tokens]")).to_have_text(str(job.completion_tokens))
            expect(column.locator("[data-stat=prompt-tokens]")).to_have_text(str(job.prompt_tokens))
            expect(column.locator("[data-part=finish]")).to_have_text(job.finish_text().capitalize() + ".")
            expect(column.locator("h2")).to_contain_text(checkpoint.name)
            expect(column.locator("[data-part=settings]")).to_contain_text(f"temperature {job.temperature}")
            expect(column.locator("[data-part=settings] strong")).to_have_text(
                [f"temperature {job.temperature}", f"max tokens {job.max_tokens}"])  # what differs
            expect(column.get_by_role("link", name=f"Open job {job.pk}")).to_have_attribute("href", f"/jobs/{job.pk}/")

        # Side by side on a desktop, one under the other on a phone, and nothing scrolls sideways there.
        box_a, box_b = columns["a"].bounding_box(), columns["b"].bounding_box()
        assert box_a["x"] + box_a["width"] <= box_b["x"] and abs(box_a["y"] - box_b["y"]) < 1
        snap(page, "compare-live-1280-light")
        page.set_viewport_size({"width": 390, "height": 844})
        box_a, box_b = columns["a"].bounding_box(), columns["b"].bounding_box()
        assert box_a["y"] + box_a["height"] <= box_b["y"]
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        snap(page, "compare-live-390-light")

        # Both are ordinary jobs: in the history, each with its page.
        page.goto(f"{web.url}/jobs/")
        for job in (a, b):
            expect(page.locator(f'a[href="/jobs/{job.pk}/"]').first).to_be_visible()
        assert violations == []
