"""The job page in Chromium against the site under uvicorn (and, where a job must run, a real worker with the
bundled model): the waiting notice gives way to the first token and the live counters move; an answer cut at
the token limit says so and Continue extends it; copy buttons fill the clipboard; Markdown rendered while
streaming stays sanitized; a rating is stored and the history filters by it. With LLMSITE_SCREENSHOTS set,
test_screenshots saves the pages at 390 and 1280 px, light and dark."""
import re
import time

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from generation import services
from generation.models import Conversation, Job
from tests.browser.pages import (
    WIDTHS,
    browser_page,
    screenshots_dir,
    sign_in,
    snap,
    wait_until_resident,
    watch_violations,
)

pytestmark = pytest.mark.django_db(transaction=True)

CODE_ANSWER = ("Here is the function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
               "And a shell line:\n\n```\necho '<b>hi</b>'\n```\n\nIt **adds** two numbers.")


def finished_job(owner, checkpoint, **fields) -> Job:
    values = {"owner": owner, "task": Job.Task.CODE, "prompt": "Write a function that adds two numbers.",
              "options": {"language": "python"}, "checkpoint": checkpoint, "status": Job.Status.SUCCEEDED,
              "output": CODE_ANSWER, "finish_reason": "stop", "prompt_tokens": 61, "completion_tokens": 40,
              "attempts": 1, "batch_size": 1, "decode_s": 1.3, "max_tokens": 64}
    job = Job.objects.create(**{**values, **fields})
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(created_at=now - timezone.timedelta(seconds=4),
                                         started_at=now - timezone.timedelta(seconds=2.5),
                                         first_token_at=now - timezone.timedelta(seconds=2.2), finished_at=now)
    job.refresh_from_db()
    return job


def test_copy_buttons_put_the_code_and_the_whole_answer_on_the_clipboard(web, owner, checkpoint):
    job = finished_job(owner, checkpoint)
    with browser_page(clipboard=True) as page:
        violations = watch_violations(page)
        sign_in(page, web.url)
        page.goto(f"{web.url}/jobs/{job.pk}/")
        buttons = page.locator("#job-output .copy-code")
        expect(buttons).to_have_count(2)
        expect(page.locator("#job-output .highlight").first).to_contain_text("def add(a, b):")
        page.locator("#job-output .copy-code").nth(0).focus()
        page.keyboard.press("Tab")  # from a block's Copy button to the block itself
        expect(page.locator("#job-output .highlight pre").first).to_be_focused()

        buttons.nth(0).click()
        expect(buttons.nth(0)).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b"
        buttons.nth(1).click()
        assert page.evaluate("navigator.clipboard.readText()") == "echo '<b>hi</b>'"
        page.click("#job [data-part=copy-all]")
        expect(page.locator("#job [data-part=copy-all]")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == CODE_ANSWER
        assert violations == []


def test_markdown_rendered_while_streaming_is_sanitized(web, owner, checkpoint):
    job = finished_job(owner, checkpoint)
    with browser_page() as page:
        sign_in(page, web.url)
        page.goto(f"{web.url}/jobs/{job.pk}/")
        html = page.evaluate("""() => {
            const el = document.createElement('div');
            document.body.appendChild(el);
            window.llmsiteMarkdown.render(el, '<img src=x onerror="window.pwned=1">\\n\\n**bold** ' +
              '[bad](javascript:window.pwned=2) [good](https://example.com)\\n\\n```js\\nlet a = "<b>";\\n```\\n' +
              '| a |\\n|:-:|\\n| 1 |\\n\\n```py\\nunclosed(');
            return el.innerHTML;
        }""")
        page.wait_for_timeout(200)
        assert page.evaluate("window.pwned") is None
        assert "<img" not in html and "javascript:" not in html.replace("[bad](javascript:window.pwned=2)", "")
        assert "style=" not in html
        assert "<strong>bold</strong>" in html
        assert '<a href="https://example.com" rel="noopener noreferrer nofollow">good</a>' in html
        assert 'let a = "&lt;b&gt;";' in html
        assert html.count('class="copy-code') == 2  # the unclosed block is a code block already
        assert html.count('<pre tabindex="0">') == 2  # code blocks scroll sideways: the keyboard reaches them


def test_a_rating_is_stored_and_the_history_filters_by_it(web, owner, checkpoint):
    job = finished_job(owner, checkpoint)
    other = finished_job(owner, checkpoint, prompt="Another job, not rated")
    with browser_page() as page:
        sign_in(page, web.url)
        page.goto(f"{web.url}/jobs/{job.pk}/")
        page.click("#rating-form summary")
        page.fill("#rating-form textarea[name=comment]", "Correct and short.")
        page.click("#rating-form button[value=up]")
        expect(page.locator("#rating-form button[value=up]")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#rating-form textarea[name=comment]")).to_have_value("Correct and short.")
        job.refresh_from_db()
        assert (job.rating, job.rating_comment) == (Job.Rating.UP, "Correct and short.")

        page.goto(f"{web.url}/jobs/")
        page.select_option("#filter-rating", "up")
        page.click("form.filters button[type=submit]")
        expect(page).to_have_url(re.compile(r"rating=up"))
        expect(page.locator("tr.job-row")).to_have_count(1)
        expect(page.locator(f"tr.job-row[data-job-id='{job.pk}']")).to_have_count(1)
        page.goto(f"{web.url}/jobs/?rating=unrated")
        expect(page.locator(f"tr.job-row[data-job-id='{other.pk}']")).to_have_count(1)
        expect(page.locator("tr.job-row")).to_have_count(1)
        page.goto(f"{web.url}/jobs/?rating=down")
        expect(page.locator("tr.job-row")).to_have_count(0)


@pytest.mark.skipif(screenshots_dir() is None, reason="screenshots only when LLMSITE_SCREENSHOTS names a folder")
def test_screenshots(web, owner, checkpoint):
    """The pages at a phone's and a desktop's width, light and dark: for a person to look at."""
    done = finished_job(owner, checkpoint, rating=Job.Rating.UP, rating_comment="Clean.")
    cut = finished_job(owner, checkpoint, output="Sure! Here is a bubble sort:\n\n```python\ndef bubble_sort(items):\n"
                       "    n = len(items)\n    for i in range(n):\n        for j in range(", finish_reason="length")
    running = finished_job(owner, checkpoint, status=Job.Status.RUNNING, output="Once upon a time, a dragon",
                           finish_reason="", completion_tokens=None)
    Job.objects.filter(pk=running.pk).update(finished_at=None)
    conversation = Conversation.objects.create(owner=owner, title="Sorting in Python",
                                               system_prompt="You are a helpful assistant. Answer clearly.")
    turns = [("How do I sort a list in Python?", "Use `sorted()` for a new list or `list.sort()` in place:\n\n"
              "```python\nnumbers = [3, 1, 2]\nprint(sorted(numbers))\n```"),
             ("And in reverse order?", "Pass `reverse=True`:\n\n```python\nsorted(numbers, reverse=True)\n```")]
    for prompt, output in turns:
        turn = services.conversation_turn_submit(conversation=conversation, message=prompt)
        Job.objects.filter(pk=turn.pk).update(status=Job.Status.SUCCEEDED, output=output, finish_reason="stop",
                                              started_at=turn.created_at, first_token_at=turn.created_at,
                                              finished_at=turn.created_at, completion_tokens=20)
    api = finished_job(owner, checkpoint, task=Job.Task.CHAT, source=Job.Source.API, prompt="Where?",
                       options={"messages": [{"role": "system", "content": "You are a pirate."},
                                             {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Arr!"},
                                             {"role": "user", "content": "Where?"}]}, output="Under the palm tree.")
    pages = {"job": f"/jobs/{done.pk}/", "job-cut": f"/jobs/{cut.pk}/", "job-running": f"/jobs/{running.pk}/",
             "job-api-chat": f"/jobs/{api.pk}/", "conversation": f"/conversations/{conversation.pk}/",
             "conversation-new": "/conversations/new/", "conversation-rerun": f"/conversations/new/?from_job={api.pk}",
             "conversations": "/conversations/"}
    for scheme in ("light", "dark"):
        for width in WIDTHS:
            with browser_page(width=width, color_scheme=scheme) as page:
                violations = watch_violations(page)
                sign_in(page, web.url)
                for name, path in pages.items():
                    page.goto(f"{web.url}{path}")
                    page.wait_for_timeout(400 if name == "job-running" else 150)
                    if name == "conversation":
                        page.evaluate("window.scrollTo(0, 0)")
                    snap(page, f"{name}-{width}-{scheme}")
                assert violations == []


def test_the_waiting_notice_gives_way_to_the_first_token_and_the_counters_move(web, checkpoint, worker, owner):
    wait_until_resident(worker)
    with browser_page() as page:
        violations = watch_violations(page)
        sign_in(page, web.url)
        job = services.job_create(owner=owner, task="qa", prompt="Tell me a long story about a brave dragon.",
                                  checkpoint=checkpoint, max_tokens=512, temperature=0.0)
        response = page.goto(f"{web.url}/jobs/{job.pk}/")
        assert 'id="job-waiting" data-part="waiting" class="waiting">Waiting for the model' in response.text()

        expect(page.locator("#job-output")).not_to_have_text("", timeout=120_000)
        expect(page.locator("#job-waiting")).to_be_hidden()
        expect(page.locator("#job-live")).to_be_visible()
        tokens = page.locator("#job-live [data-stat=live-tokens]")
        first_count = int(tokens.inner_text())
        first_elapsed = page.locator("#job-live [data-stat=live-elapsed]").inner_text()
        page.wait_for_function(
            "n => +document.querySelector('#job-live [data-stat=live-tokens]').textContent > n + 3", arg=first_count)
        expect(page.locator("#job-live [data-stat=live-elapsed]")).not_to_have_text(first_elapsed)
        expect(page.locator("#job-live [data-stat=live-tps]")).to_have_text(re.compile(r"^\d+\.\d$"))
        expect(page.locator("#stat-ttft-user")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
        assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING  # all of it while the job ran
        expect(page.locator("#job-output")).to_have_attribute("aria-busy", "true")
        snap(page, "job-streaming-1280-light", full_page=False)

        # Stopping it (the run would take long on a busy machine) ends the live view with the stored job.
        page.click("#stop-button")
        expect(page.locator("#job-status")).to_have_text("Cancelled", timeout=30_000)
        expect(page.locator("#job-finish")).to_have_text("Stopped by you.")
        expect(page.locator("#job-live")).to_be_hidden()
        expect(page.locator("#job-output")).to_have_attribute("aria-busy", "false")
        expect(page.locator("#continue-form")).to_be_hidden()
        # The page says Cancelled at once; the worker then saves its last words (and the first token's time, which
        # a run stopped within its first progress save has not stored yet) and the stream's end brings them.
        deadline = time.monotonic() + 60
        while (job := Job.objects.get(pk=job.pk)).finish_reason != "cancelled":
            assert time.monotonic() < deadline, "the worker did not save the stopped job"
            time.sleep(0.2)
        # The user's wait (from sending) includes the engine's.
        expect(page.locator("#stat-ttft")).to_have_text(f"{job.ttft():.2f} s")
        expect(page.locator("#stat-ttft-user")).to_have_text(f"{job.ttft_from_submission():.2f} s")
        assert job.ttft_from_submission() >= job.ttft()
        assert violations == []


def test_an_answer_cut_at_the_token_limit_says_so_and_continue_extends_it(web, checkpoint, worker, owner):
    wait_until_resident(worker)
    with browser_page() as page:
        sign_in(page, web.url)
        job = services.job_create(owner=owner, task="code", prompt="Write a Python function that sorts a list "
                                  "with bubble sort, with comments.", options={"language": "python"},
                                  checkpoint=checkpoint, max_tokens=12, temperature=0.0)
        page.goto(f"{web.url}/jobs/{job.pk}/")
        expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=120_000)
        expect(page.locator("#job-finish")).to_have_text("Stopped at the token limit.")
        expect(page.locator("#continue-button")).to_be_visible()
        job.refresh_from_db()
        assert job.finish_reason == "length" and job.output

        page.click("#continue-button")
        page.wait_for_url(re.compile(rf"/jobs/(?!{job.pk}/)\d+/$"))
        new = Job.objects.get(options__continues=job.pk)
        assert page.url.endswith(f"/jobs/{new.pk}/")
        expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=120_000)
        new.refresh_from_db()
        assert new.output and new.options["messages"][-2] == {"role": "assistant", "content": job.output}
        # The page shows one answer: the old text, then the new; and it is longer than before.
        raw = page.locator("#job").get_attribute("data-raw")
        assert raw == job.output + new.output and len(raw) > len(job.output)
        rendered = page.locator("#job-output").inner_text()
        assert job.output.split()[0] in rendered and len(rendered.strip()) > len(job.output.strip()) / 2
        expect(page.get_by_text(f"Continues job {job.pk}")).to_be_visible()
