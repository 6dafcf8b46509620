"""Conversations: /conversations/ pages and the services behind them. A turn is a chat job whose messages are the
system prompt, the earlier exchanges (the oldest left out past the context window) and the new message."""
from __future__ import annotations

import pytest

from generation import chat, services
from generation.models import Conversation, Job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]


@pytest.fixture
def conversation(owner, checkpoint) -> Conversation:
    return Conversation.objects.create(owner=owner, title="Capitals", system_prompt="You are terse.")


def answered(conversation: Conversation, prompt: str, output: str, **fields) -> Job:
    job = services.conversation_turn_submit(conversation=conversation, message=prompt)
    Job.objects.filter(pk=job.pk).update(status=fields.pop("status", Job.Status.SUCCEEDED), output=output,
                                         finish_reason=fields.pop("finish_reason", "stop"), **fields)
    job.refresh_from_db()
    return job


def test_it_starts_a_conversation_with_its_first_turn(owner_client, owner, checkpoint):
    response = owner_client.post("/conversations/new/", {
        "preset": "code", "system_prompt": "Answer in Python only.", "message": "Reverse a list", "title": ""})
    conversation = Conversation.objects.get(owner=owner)
    assert response.status_code == 302
    assert response["Location"] == f"/conversations/{conversation.pk}/"
    assert (conversation.title, conversation.preset, conversation.system_prompt) == (
        "Reverse a list", "code", "Answer in Python only.")
    [job] = conversation.turns.all()
    assert (job.task, job.source, job.status, job.prompt) == (Job.Task.CHAT, Job.Source.WEB, Job.Status.QUEUED,
                                                            "Reverse a list")
    assert job.options["messages"] == [{"role": "system", "content": "Answer in Python only."},
                                       {"role": "user", "content": "Reverse a list"}]
    assert job.options["left_out"] == 0
    assert job.prompt_tokens and job.max_tokens == 256


def test_it_offers_the_presets_with_the_task_system_prompts(owner_client, checkpoint):
    content = owner_client.get("/conversations/new/").content.decode()
    assert 'id="system-presets"' in content
    for key in ("assistant", "code", "qa", "summarize"):
        assert f'<option value="{key}"' in content
    assert chat.PRESETS["code"].system_prompt.startswith("You are an expert Python programmer")
    assert chat.PRESETS["qa"].system_prompt.startswith("You answer questions accurately")
    assert chat.PRESETS["summarize"].system_prompt.startswith("You write faithful summaries")


def test_a_follow_up_carries_the_thread_and_the_system_prompt(conversation):
    first = answered(conversation, "Capital of France?", "Paris.")
    second = services.conversation_turn_submit(conversation=conversation, message="And of Italy?")
    assert second.options["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert second.prompt_tokens > first.prompt_tokens
    assert second.conversation == conversation


def test_it_leaves_out_turns_without_an_answer(conversation):
    answered(conversation, "First?", "", status=Job.Status.FAILED)
    answered(conversation, "Second?", "Two.")
    third = services.conversation_turn_submit(conversation=conversation, message="Third?")
    assert [m["content"] for m in third.options["messages"]] == ["You are terse.", "Second?", "Two.", "Third?"]


def test_it_trims_the_oldest_turns_to_fit_the_context_window(conversation, settings, owner_client):
    for i in range(4):
        answered(conversation, f"Question {i}: " + "word " * 40, f"Answer {i}: " + "word " * 40)
    settings.ENGINE_MAX_SEQ_LEN = 300  # room for the system prompt, two exchanges, the new message and 64 tokens
    job = services.conversation_turn_submit(conversation=conversation, message="Last question?", max_tokens=64)
    contents = [m["content"] for m in job.options["messages"]]
    assert contents[0] == "You are terse." and contents[-1] == "Last question?"
    assert job.options["left_out"] >= 1
    assert not any(c.startswith("Question 0") for c in contents)
    assert any(c.startswith("Answer 3") for c in contents)  # the newest exchange is kept
    assert job.prompt_tokens + 64 <= 300
    assert len(contents) == 2 + 2 * (4 - job.options["left_out"])
    n = job.options["left_out"]
    content = owner_client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert f"{n} earlier turn{'s' if n > 1 else ''} left out to fit the context." in content
    assert "left out to fit the context" in owner_client.get(f"/jobs/{job.pk}/").content.decode()


def test_it_refuses_a_message_too_long_for_the_window(conversation, settings, owner_client):
    settings.ENGINE_MAX_SEQ_LEN = 64
    response = owner_client.post(f"/conversations/{conversation.pk}/messages/", {"message": "word " * 200})
    assert response.status_code == 400
    assert "too long for the 64-token context window" in response.content.decode()
    assert not conversation.turns.exists()


def test_it_makes_the_next_message_wait_for_the_answer(conversation, owner_client):
    services.conversation_turn_submit(conversation=conversation, message="Hi")
    page = owner_client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert '<fieldset id="composer-fields" disabled>' in page
    response = owner_client.post(f"/conversations/{conversation.pk}/messages/", {"message": "Again"})
    assert response.status_code == 409
    assert "Wait for the answer" in response.content.decode()
    assert conversation.turns.count() == 1


def test_it_posts_a_follow_up_and_redirects_to_the_new_turn(conversation, owner_client):
    answered(conversation, "Hi", "Hello!")
    response = owner_client.post(f"/conversations/{conversation.pk}/messages/",
                                 {"message": "How are you?", "max_tokens": "32", "temperature": "0.5"})
    job = conversation.turns.order_by("-id").first()
    assert response.status_code == 302 and response["Location"] == f"/conversations/{conversation.pk}/#turn-{job.pk}"
    assert (job.prompt, job.max_tokens, job.temperature) == ("How are you?", 32, 0.5)


def test_the_page_shows_the_system_prompt_and_every_turn(conversation, owner_client):
    answered(conversation, "Capital of France?", "It is **Paris**.")
    busy = services.conversation_turn_submit(conversation=conversation, message="<b>And Italy?</b>")
    content = owner_client.get(f"/conversations/{conversation.pk}/").content.decode()
    assert 'id="system-prompt-text">You are terse.' in content
    assert "Capital of France?" in content and "It is <strong>Paris</strong>." in content
    assert "&lt;b&gt;And Italy?&lt;/b&gt;" in content
    assert f'data-stream-url="/jobs/{busy.pk}/stream"' in content
    assert 'aria-live="polite"' in content


def test_it_edits_the_system_prompt_for_the_next_turns(conversation, owner_client):
    answered(conversation, "Hi", "Hello!")
    owner_client.post(f"/conversations/{conversation.pk}/edit/", {"title": "Renamed", "system_prompt": "Be poetic."})
    conversation.refresh_from_db()
    assert (conversation.title, conversation.system_prompt) == ("Renamed", "Be poetic.")
    job = services.conversation_turn_submit(conversation=conversation, message="More")
    assert job.options["messages"][0] == {"role": "system", "content": "Be poetic."}


def test_a_blank_system_prompt_sends_none(owner, checkpoint):
    conversation = Conversation.objects.create(owner=owner, system_prompt="  ")
    job = services.conversation_turn_submit(conversation=conversation, message="Hi")
    assert job.options["messages"] == [{"role": "user", "content": "Hi"}]


def test_it_lists_and_deletes_conversations_keeping_the_jobs(conversation, owner_client):
    job = answered(conversation, "Hi", "Hello!")
    assert "Capitals" in owner_client.get("/conversations/").content.decode()
    response = owner_client.post(f"/conversations/{conversation.pk}/delete/")
    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    job.refresh_from_db()
    assert job.conversation is None


def test_another_user_cannot_see_or_use_a_conversation(conversation, other_client):
    for path in ("/conversations/{}/",):
        assert other_client.get(path.format(conversation.pk)).status_code == 404
    for path in ("/conversations/{}/messages/", "/conversations/{}/edit/", "/conversations/{}/delete/"):
        assert other_client.post(path.format(conversation.pk), {"message": "x"}).status_code == 404
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    assert not conversation.turns.exists()


def test_turn_messages_merge_a_continuation_into_the_answer_it_continues():
    def turn(prompt, output, **options):
        return Job(task="chat", prompt=prompt, output=output, status=Job.Status.SUCCEEDED, options=options)

    groups = chat.turn_messages([turn("Q", "part one, "), turn("Q", "part two", continues=1), turn("Q2", "A2")])
    assert groups == [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "part one, part two"}],
                      [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]]
