"""POST /jobs/<id>/continue/: an answer stopped at the token limit goes on in a new job (services.job_continue)."""
from __future__ import annotations

import pytest

from generation import chat, services
from generation.models import Conversation, Job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]


def cut(make_job, **fields) -> Job:
    values = {"status": Job.Status.SUCCEEDED, "finish_reason": "length", "output": "def add(a, b):\n    ret",
              "task": Job.Task.CODE, "prompt": "Add two numbers", "options": {"language": "python"},
              "max_tokens": 12, "temperature": 0.2}
    return make_job(**{**values, **fields})


def test_it_continues_a_code_answer_as_a_chat_with_the_answer_so_far(owner_client, make_job):
    job = cut(make_job)
    response = owner_client.post(f"/jobs/{job.pk}/continue/")
    new = Job.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{new.pk}/"
    messages = new.options["messages"]
    assert messages[0]["role"] == "system" and "expert Python programmer" in messages[0]["content"]
    assert messages[1:] == [{"role": "user", "content": "Add two numbers"},
                            {"role": "assistant", "content": "def add(a, b):\n    ret"},
                            {"role": "user", "content": chat.CONTINUE_PROMPT}]
    assert (new.task, new.status, new.options["continues"], new.max_tokens, new.temperature) == (
        Job.Task.CHAT, Job.Status.QUEUED, job.pk, 12, 0.2)
    assert new.answer_so_far() == "def add(a, b):\n    ret"


def test_the_continuation_page_shows_the_whole_answer_and_continue_extends_it(owner_client, make_job):
    job = cut(make_job)
    owner_client.post(f"/jobs/{job.pk}/continue/")
    new = Job.objects.exclude(pk=job.pk).get()
    Job.objects.filter(pk=new.pk).update(status=Job.Status.SUCCEEDED, finish_reason="length", output="urn a + b\n")
    data = owner_client.get(f"/jobs/{new.pk}.json").json()
    assert data["answer_so_far"] == "def add(a, b):\n    ret" and data["output"] == "urn a + b\n"
    assert "return a + b" in data["output_html"]  # the answer so far and the new text, rendered as one
    assert data["can_continue"] is True
    # A second Continue continues the whole answer, once.
    owner_client.post(f"/jobs/{new.pk}/continue/")
    third = Job.objects.exclude(pk__in=[job.pk, new.pk]).get()
    assert [m["role"] for m in third.options["messages"]] == ["system", "user", "assistant", "user"]
    assert third.options["messages"][2]["content"] == "def add(a, b):\n    return a + b\n"
    assert third.answer_so_far() == "def add(a, b):\n    return a + b\n"


def test_the_page_says_why_it_stopped_and_offers_continue_only_at_the_limit(owner_client, make_job):
    limited = cut(make_job)
    content = owner_client.get(f"/jobs/{limited.pk}/").content.decode()
    assert "Stopped at the token limit." in content
    assert 'id="continue-form" data-part="continue">' in content
    finished = cut(make_job, finish_reason="stop")
    content = owner_client.get(f"/jobs/{finished.pk}/").content.decode()
    assert "Stopped at the end of the answer." in content
    assert 'id="continue-form" data-part="continue" hidden>' in content
    stopped = cut(make_job, status=Job.Status.CANCELLED, finish_reason="cancelled")
    assert "Stopped by you." in owner_client.get(f"/jobs/{stopped.pk}/").content.decode()
    response = owner_client.post(f"/jobs/{finished.pk}/continue/", follow=True)
    assert "Only an answer that stopped at the token limit can be continued." in response.content.decode()
    assert Job.objects.count() == 3


def test_it_continues_a_conversation_turn_as_its_next_turn(owner, checkpoint, owner_client):
    conversation = Conversation.objects.create(owner=owner, system_prompt="Be brief.")
    turn = services.conversation_turn_submit(conversation=conversation, message="List three colours")
    Job.objects.filter(pk=turn.pk).update(status=Job.Status.SUCCEEDED, finish_reason="length", output="Red, gre")
    response = owner_client.post(f"/jobs/{turn.pk}/continue/", {"next": f"/conversations/{conversation.pk}/"})
    new = conversation.turns.order_by("-id").first()
    assert response["Location"] == f"/conversations/{conversation.pk}/#turn-{new.pk}"
    assert new.options["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "List three colours"},
                                       {"role": "assistant", "content": "Red, gre"},
                                       {"role": "user", "content": chat.CONTINUE_PROMPT}]
    # The older turn can no longer be continued; the next message sees one answer.
    assert owner_client.get(f"/jobs/{turn.pk}.json").json()["can_continue"] is False
    Job.objects.filter(pk=new.pk).update(status=Job.Status.SUCCEEDED, finish_reason="stop", output="en, blue.")
    follow = services.conversation_turn_submit(conversation=conversation, message="Thanks")
    assert follow.options["messages"][2] == {"role": "assistant", "content": "Red, green, blue."}
    assert len(follow.options["messages"]) == 4


def test_it_continues_a_completion_by_appending_to_its_prompt(owner_client, make_job):
    job = make_job(task=Job.Task.COMPLETION, prompt="Once upon a time", output=" there was", source="api",
                   status=Job.Status.SUCCEEDED, finish_reason="length", max_tokens=8)
    owner_client.post(f"/jobs/{job.pk}/continue/")
    new = Job.objects.exclude(pk=job.pk).get()
    assert (new.task, new.prompt, new.source) == (Job.Task.COMPLETION, "Once upon a time there was", "api")
    assert new.answer_so_far() == " there was"


def test_another_user_cannot_continue(other_client, make_job):
    job = cut(make_job)
    assert other_client.post(f"/jobs/{job.pk}/continue/").status_code == 404
    assert Job.objects.count() == 1
