"""A conversation in Chromium against the site under uvicorn and a real worker with the bundled model: a preset
fills the system prompt, the first answer streams into the page, the box for the next message opens when it
ends, and the second turn sends the model the system prompt and the first exchange (its JSON shows them)."""
import re

import pytest
from playwright.sync_api import expect

from generation.models import Conversation, Job
from tests.browser.pages import browser_page, sign_in, snap, wait_until_resident, watch_violations

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def test_a_two_turn_conversation_sends_the_first_turn_and_the_system_prompt(web, checkpoint, worker, owner):
    wait_until_resident(worker)
    with browser_page(timeout_ms=30_000) as page:
        violations = watch_violations(page)
        sign_in(page, web.url)
        page.click("#start-conversation")
        expect(page).to_have_url(re.compile(r"/conversations/new/$"))
        page.select_option("#id_preset", "code")
        expect(page.locator("#id_system_prompt")).to_have_value(re.compile(r"^You are an expert Python programmer"))
        page.fill("#id_system_prompt", SYSTEM)
        page.fill("#id_message", "What is the capital of France?")
        page.click("#conversation-form details.advanced summary")
        page.fill("#id_max_tokens", "24")
        page.click("#conversation-form button[type=submit]")
        expect(page).to_have_url(re.compile(r"/conversations/\d+/(#.*)?$"))
        expect(page.locator("#system-prompt-text")).to_have_text(SYSTEM)

        answers = page.locator(".thread [data-job]")
        expect(answers).to_have_count(1)
        expect(page.locator("#id_message")).to_be_disabled()  # until the answer is complete
        expect(answers.nth(0).locator("[data-part=status]")).to_have_text("Succeeded", timeout=120_000)
        expect(answers.nth(0).locator("[data-part=output]")).not_to_have_text("")
        expect(page.locator("#id_message")).to_be_enabled()

        page.fill("#id_message", "And what is the capital of Italy?")
        page.press("#id_message", "Control+Enter")
        expect(answers).to_have_count(2)
        expect(answers.nth(1).locator("[data-part=status]")).to_have_text("Succeeded", timeout=120_000)
        expect(page.locator(".bubble.user")).to_have_count(2)
        snap(page, "conversation-live-1280-light")

        conversation = Conversation.objects.get(owner=owner)
        first, second = conversation.turns.order_by("id")
        assert first.output and first.status == second.status == Job.Status.SUCCEEDED
        data = page.request.get(f"{web.url}/jobs/{second.pk}.json").json()
        assert data["task"] == "chat" and data["conversation_id"] == conversation.pk
        assert data["options"]["messages"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": first.output},
            {"role": "user", "content": "And what is the capital of Italy?"},
        ]
        # The model got all of it: the second prompt holds the first one and the first answer.
        assert data["prompt_tokens"] > first.prompt_tokens + first.completion_tokens - 2
        alone = page.request.get(f"{web.url}/jobs/{first.pk}.json").json()
        assert alone["options"]["messages"][0] == {"role": "system", "content": SYSTEM}

        # The job page of a turn shows what was sent, system prompt included.
        page.goto(f"{web.url}/jobs/{second.pk}/")
        page.click("details.sent-messages summary")
        expect(page.locator(".sent-messages .chat-message")).to_have_count(4)
        expect(page.locator(".sent-messages .role-system")).to_contain_text(SYSTEM)
        assert violations == []
