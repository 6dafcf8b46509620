"""The Content-Security-Policy in Chromium against the site under uvicorn: signing in (and the lockout page), the
new-job form, a job page, the history, the account page and the admin report no violation, and their scripts
still work (the form's task switch, the job page's live status, the delete confirmation)."""
import re

import pytest
from playwright.sync_api import Page, expect

from generation import services
from generation.fleet import registry
from generation.models import Job
from tests.browser.chromium import chromium_page

pytestmark = pytest.mark.django_db(transaction=True)


def watch_violations(page: Page) -> list[str]:
    """Every CSP violation the page reports: the `securitypolicyviolation` event (through a binding, which the
    policy does not govern) and Chromium's console message."""
    seen: list[str] = []
    page.expose_function("reportCspViolation", lambda text: seen.append(text))
    page.add_init_script("document.addEventListener('securitypolicyviolation', function (e) {"
                         " window.reportCspViolation(location.pathname + ': ' + e.violatedDirective + ' '"
                         " + (e.blockedURI || 'inline')); });")
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text
            else None)
    return seen


def sign_in(page: Page, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main button[type=submit]")


def test_the_pages_pass_the_policy_and_their_scripts_work(web, owner, other, staff, checkpoint, empty_redis):
    # A worker that says it is alive and takes nothing: submitting is allowed, and the job waits in the queue.
    registry.publish(name="idle@test", holds={}, status={"resident": [], "loading": [], "running_jobs": 0})
    with chromium_page(timeout_ms=30_000) as page:
        violations = watch_violations(page)

        # Five wrong passwords lock bob out at this address, and the sign-in page says until when.
        for _ in range(5):
            sign_in(page, web.url, "bob", "wrong-password")
        expect(page.locator("#lockout")).to_contain_text("Too many failed sign-ins")
        sign_in(page, web.url, "bob", "bob-password-1")
        expect(page.locator("#lockout")).to_contain_text(re.compile(r"sign in again at \d\d:\d\d:\d\d"))

        # Alice, at the same address, signs in; the form shows only the chosen task's fields.
        sign_in(page, web.url, "alice", "alice-password-1")
        expect(page).to_have_url(re.compile(r"/jobs/new/$"))
        page.select_option("#id_task", "qa")
        expect(page.locator("#id_context")).to_be_visible()
        expect(page.locator("#id_language")).to_be_hidden()
        page.select_option("#id_task", "code")
        expect(page.locator("#id_language")).to_be_visible()
        expect(page.locator("#id_context")).to_be_hidden()
        page.fill("#id_prompt", "Write a function that adds two numbers.")
        page.click("#job-form button[type=submit]")
        expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))

        # No worker takes it: the job waits until we cancel it, and the page follows its stream without reload.
        job = Job.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
        expect(page.locator("#job-status")).to_have_text("Queued")
        page.evaluate("window.notReloaded = true")
        services.job_cancel(job=job)
        expect(page.locator("#job-status")).to_have_text("Cancelled")
        expect(page.locator("#cancel-form")).to_be_hidden()
        assert page.evaluate("window.notReloaded") is True

        # Delete asks first (a listener in confirm.js, not an onsubmit attribute): dismissing keeps the job.
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.click("#job .actions button.danger")
        page.wait_for_timeout(300)
        assert Job.objects.filter(pk=job.pk).exists()

        page.goto(f"{web.url}/jobs/")
        row = page.locator("tr.job-row", has_text="adds two numbers")
        expect(row).to_have_count(1)
        page.once("dialog", lambda dialog: dialog.accept())
        row.locator("button.danger").click()
        expect(page.locator("tr.job-row")).to_have_count(0)
        assert not Job.objects.filter(pk=job.pk).exists()

        page.goto(f"{web.url}/accounts/")
        page.fill("#id_name", "laptop")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#new-key-secret")).to_contain_text("sk-llmsite-")
        page.click("header form button[type=submit]")  # sign out
        expect(page).to_have_url(re.compile(r"/accounts/login/$"))

        # The admin passes the same policy.
        sign_in(page, web.url, "root", "root-password-1")
        for path, marker in [("/admin/", "#content"), ("/admin/modelzoo/checkpoint/", "#result_list"),
                             ("/admin/modelzoo/checkpoint/add/", "#id_upload"), ("/admin/workers/", "#workers"),
                             ("/admin/generation/job/", "#changelist")]:
            page.goto(f"{web.url}{path}")
            expect(page.locator(marker)).to_be_visible()
        page.wait_for_timeout(300)
        assert violations == []

        # The watch sees a violation when there is one: an inline script added now is refused.
        page.evaluate("() => { const s = document.createElement('script');"
                      " s.textContent = 'window.inlineRan = true'; document.body.appendChild(s); }")
        page.wait_for_function("() => true")
        page.wait_for_timeout(300)
        assert page.evaluate("window.inlineRan") is None
        assert any("script-src" in text for text in violations), violations
