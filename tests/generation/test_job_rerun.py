"""/jobs/new/?rerun=<id> prefills the form from one of the user's jobs; a chat job reruns as a conversation with
all its messages and its system prompt, and a replay keeps them too."""
from __future__ import annotations

import pytest

from generation import services
from generation.models import Conversation, Job
from modelzoo.models import Checkpoint

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]

API_MESSAGES = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Arr!"},
    {"role": "user", "content": "Where is the treasure?"},
]


@pytest.fixture
def api_chat(make_job) -> Job:
    return make_job(task=Job.Task.CHAT, source=Job.Source.API, prompt="Where is the treasure?",
                    options={"messages": API_MESSAGES}, status=Job.Status.SUCCEEDED, output="Buried.",
                    max_tokens=40, temperature=0.7)


def test_it_prefills_the_form_from_a_job(owner_client, make_job, checkpoint):
    job = make_job(task=Job.Task.CODE, prompt="sort a dict by value", options={"language": "go"},
                   temperature=0.9, top_p=0.8, top_k=12, max_tokens=99, seed=7, repetition_penalty=1.3)
    response = owner_client.get(f"/jobs/new/?rerun={job.pk}")
    assert response.status_code == 200
    form = response.context["form"]
    assert {name: form[name].value() for name in
            ("task", "prompt", "language", "temperature", "top_p", "top_k", "max_tokens", "seed",
             "repetition_penalty", "checkpoint")} == {
        "task": "code", "prompt": "sort a dict by value", "language": "go", "temperature": 0.9, "top_p": 0.8,
        "top_k": 12, "max_tokens": 99, "seed": 7, "repetition_penalty": 1.3, "checkpoint": checkpoint.pk}
    assert b"sort a dict by value</textarea>" in response.content


def test_it_prefills_context_and_length(owner_client, make_job):
    qa = make_job(task=Job.Task.QA, prompt="Who?", context="Ann did.")
    summary = make_job(task=Job.Task.SUMMARIZE, prompt="Long text", options={"length": "long"})
    assert owner_client.get(f"/jobs/new/?rerun={qa.pk}").context["form"]["context"].value() == "Ann did."
    assert owner_client.get(f"/jobs/new/?rerun={summary.pk}").context["form"]["length"].value() == "long"


def test_it_falls_back_to_the_default_checkpoint_when_the_old_one_is_retired(owner_client, make_job, checkpoint):
    retired = Checkpoint.objects.create(name="old-ft", format="gguf", path="/x.gguf", status="retired")
    job = make_job(checkpoint=retired)
    form = owner_client.get(f"/jobs/new/?rerun={job.pk}").context["form"]
    assert form["checkpoint"].value() is None  # "The task's default"


def test_it_answers_404_for_a_bad_rerun_id(owner_client):
    assert owner_client.get("/jobs/new/?rerun=abc").status_code == 404
    assert owner_client.get("/jobs/new/?rerun=424242").status_code == 404


def test_it_shows_an_empty_form_without_rerun(owner_client, checkpoint):
    response = owner_client.get("/jobs/new/")
    assert response.status_code == 200
    assert response.context["form"]["prompt"].value() is None
    assert b'<option value="" selected>The task&#x27;s default</option>' in response.content


def test_a_chat_job_reruns_as_a_conversation_not_as_a_code_job(owner_client, api_chat):
    response = owner_client.get(f"/jobs/new/?rerun={api_chat.pk}")
    assert response.status_code == 302
    assert response["Location"] == f"/conversations/new/?from_job={api_chat.pk}"
    page = owner_client.get(response["Location"])
    form = page.context["form"]
    assert form["system_prompt"].value() == "You are a pirate."
    assert form["message"].value() == "Where is the treasure?"
    assert (form["max_tokens"].value(), form["temperature"].value()) == (40, 0.7)
    assert page.context["preamble"] == API_MESSAGES[1:3]
    content = page.content.decode()
    assert "Arr!" in content and f'name="from_job" value="{api_chat.pk}"' in content


def test_the_rerun_sends_every_message_of_the_chat_job(owner_client, owner, api_chat):
    response = owner_client.post("/conversations/new/", {
        "from_job": api_chat.pk, "system_prompt": "You are a pirate.", "message": "Where is the treasure?",
        "max_tokens": "40", "temperature": "0.7"})
    conversation = Conversation.objects.get(owner=owner)
    assert response["Location"] == f"/conversations/{conversation.pk}/"
    [job] = conversation.turns.all()
    assert job.task == Job.Task.CHAT
    assert job.options["messages"] == API_MESSAGES
    assert (job.max_tokens, job.temperature) == (40, 0.7)


def test_replay_keeps_the_task_and_all_messages(api_chat):
    new = services.job_replay(job=api_chat)
    assert (new.task, new.source, new.prompt, new.options, new.max_tokens) == (
        Job.Task.CHAT, Job.Source.API, "Where is the treasure?", {"messages": API_MESSAGES}, 40)


def test_a_completion_is_sent_to_its_page_for_replay(owner_client, make_job):
    job = make_job(task=Job.Task.COMPLETION, source=Job.Source.API, prompt="Once upon")
    response = owner_client.get(f"/jobs/new/?rerun={job.pk}")
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"


def test_another_users_chat_job_cannot_be_rerun(other_client, api_chat):
    assert other_client.get(f"/conversations/new/?from_job={api_chat.pk}").status_code == 404
    assert other_client.post("/conversations/new/", {"from_job": api_chat.pk, "message": "x"}).status_code == 404


def test_an_api_chat_job_page_shows_all_its_messages(owner_client, api_chat):
    content = owner_client.get(f"/jobs/{api_chat.pk}/").content.decode()
    for message in API_MESSAGES:
        assert f'<li class="chat-message role-{message["role"]}"><span class="role">{message["role"].capitalize()}' \
               f'</span><div class="prose">{message["content"]}</div></li>' in content
    assert "Rerun as a conversation" in content and "Replay" in content
