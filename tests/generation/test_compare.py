"""Compare: POST /compare/new/ creates two jobs (one per column's settings) through services.jobs_submit, or none
with the reason on the form; /compare/?a=&b= shows two of the owner's jobs side by side, 404 for anybody else."""
from __future__ import annotations

import pytest

from generation.models import Job
from modelzoo import pool
from modelzoo.models import Checkpoint

pytestmark = pytest.mark.django_db

URL = "/compare/new/"


@pytest.fixture
def second(checkpoint) -> Checkpoint:
    """Another ready checkpoint (the bundled file under a second name)."""
    return Checkpoint.objects.create(name="SmolLM2-finetuned", format=checkpoint.format, path=checkpoint.path,
                                     status=Checkpoint.Status.READY, context_length=checkpoint.context_length)


def valid(**overrides) -> dict:
    data = {"task": "qa", "prompt": "What is the capital of France?", "context": "", "language": "python",
            "length": "medium", "system_prompt": "", "seed": "",
            "checkpoint_a": "", "temperature_a": "", "max_tokens_a": "",
            "checkpoint_b": "", "temperature_b": "", "max_tokens_b": ""}
    data.update(overrides)
    return data


def post_errors(client, data, status: int = 200) -> dict:
    response = client.post(URL, data)
    assert response.status_code == status  # the form again, not a redirect
    assert Job.objects.count() == 0
    return response.context["form"].errors


def test_it_creates_two_jobs_with_each_columns_settings(owner_client, owner, checkpoint, second):
    response = owner_client.post(URL, valid(
        seed="7", checkpoint_a=str(checkpoint.pk), temperature_a="0", max_tokens_a="32",
        checkpoint_b=str(second.pk), temperature_b="0.8", max_tokens_b="48"))
    a, b = Job.objects.order_by("id")
    assert response.status_code == 302
    assert response["Location"] == f"/compare/?a={a.pk}&b={b.pk}"
    assert (a.owner, a.task, a.prompt, a.status) == (b.owner, b.task, b.prompt, b.status) == (
        owner, "qa", "What is the capital of France?", Job.Status.QUEUED)
    assert (a.checkpoint, a.temperature, a.max_tokens, a.seed) == (checkpoint, 0.0, 32, 7)
    assert (b.checkpoint, b.temperature, b.max_tokens, b.seed) == (second, 0.8, 48, 7)
    assert a.prompt_tokens == b.prompt_tokens > 0
    # What neither column sets is the task's default, as on the new-job form.
    assert (a.top_p, a.repetition_penalty) == (b.top_p, b.repetition_penalty) == (1.0, 1.05)


def test_it_fills_blank_settings_with_the_tasks_defaults(owner_client, checkpoint):
    owner_client.post(URL, valid(task="code", prompt="Reverse a string", language="rust"))
    a, b = Job.objects.order_by("id")
    for job in (a, b):
        assert (job.checkpoint, job.temperature, job.max_tokens, job.language()) == (checkpoint, 0.2, 512, "rust")


def test_it_sends_a_chat_message_under_its_system_prompt(owner_client, checkpoint):
    owner_client.post(URL, valid(task="chat", prompt="Hello there", system_prompt="Answer in French.",
                                 temperature_b="1.2"))
    a, b = Job.objects.order_by("id")
    assert a.task == b.task == Job.Task.CHAT
    assert a.chat_messages() == b.chat_messages() == [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello there"}]
    assert (a.temperature, b.temperature) == (0.0, 1.2)
    assert b.prompt_tokens > 5  # the system prompt was counted


def test_it_puts_a_columns_error_next_to_that_columns_field(owner_client, checkpoint):
    window = pool.context_window(checkpoint)
    errors = post_errors(owner_client, valid(temperature_a="9", max_tokens_b=str(min(window, 8192))))
    assert errors["temperature_a"] == ["Ensure this value is less than or equal to 2.0."]
    assert "new tokens fit" in errors["max_tokens_b"][0]
    assert set(errors) == {"temperature_a", "max_tokens_b"}


def test_it_says_a_shared_error_once(owner_client, checkpoint):
    errors = post_errors(owner_client, valid(prompt=""))
    assert errors == {"prompt": ["Enter a prompt."]}


def test_it_refuses_a_checkpoint_that_is_not_ready(owner_client, checkpoint):
    retired = Checkpoint.objects.create(name="old", format="gguf", path="/x.gguf", status="retired")
    errors = post_errors(owner_client, valid(checkpoint_b=str(retired.pk)))
    assert errors == {"checkpoint_b": ["Choose one of the available checkpoints."]}


def test_it_queues_neither_job_when_the_quota_has_room_for_one(owner_client, make_job, settings, checkpoint):
    settings.API_RATE_LIMIT_PER_MIN = 0
    settings.API_MAX_ACTIVE_JOBS_PER_USER = 2
    running = make_job(status=Job.Status.RUNNING)
    response = owner_client.post(URL, valid())
    assert response.status_code == 429
    assert list(Job.objects.all()) == [running]  # not one of the two: no half comparison
    [error] = response.context["form"].non_field_errors()
    assert error == ("Neither job was queued: a comparison runs two jobs, and there is room for only one more right "
                     "now (Too many unfinished jobs: at most 2 per user). Try again in 5 s.")
    assert 'role="alert"' in response.content.decode() and "Neither job was queued" in response.content.decode()


def test_it_says_why_when_the_quota_has_no_room(owner_client, make_job, settings, checkpoint):
    settings.API_RATE_LIMIT_PER_MIN = 0
    settings.API_MAX_ACTIVE_JOBS_PER_USER = 1
    make_job(status=Job.Status.QUEUED)
    response = owner_client.post(URL, valid())
    assert response.status_code == 429
    assert Job.objects.count() == 1
    assert response.context["form"].non_field_errors() == [
        "Neither job was queued: too many unfinished jobs: at most 1 per user. Try again in 5 s."]


def test_the_form_is_filled_from_a_job(owner_client, make_job, checkpoint):
    job = make_job(task=Job.Task.CODE, prompt="Sort a list", options={"language": "go"}, temperature=0.4,
                   max_tokens=99, seed=3)
    response = owner_client.get(f"{URL}?from={job.pk}")
    form = response.context["form"]
    assert response.status_code == 200
    assert {key: form[key].value() for key in ("task", "prompt", "language", "seed", "checkpoint_a",
                                               "temperature_a", "max_tokens_a", "checkpoint_b", "max_tokens_b")} == {
        "task": "code", "prompt": "Sort a list", "language": "go", "seed": 3, "checkpoint_a": checkpoint.pk,
        "temperature_a": 0.4, "max_tokens_a": 99, "checkpoint_b": checkpoint.pk, "max_tokens_b": 99}


def test_a_chat_job_fills_the_system_prompt_and_its_last_message(owner_client, make_job, checkpoint):
    job = make_job(task=Job.Task.CHAT, prompt="And Italy?", options={"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"}]})
    response = owner_client.get(f"{URL}?from={job.pk}")
    form = response.context["form"]
    assert (form["task"].value(), form["system_prompt"].value(), form["prompt"].value()) == (
        "chat", "Be brief.", "And Italy?")
    assert "the 2 earlier messages of job" in response.content.decode()


def test_the_form_is_not_filled_from_anybody_elses_job(owner_client, other, checkpoint):
    theirs = Job.objects.create(owner=other, task="qa", prompt="secret", checkpoint=checkpoint)
    assert owner_client.get(f"{URL}?from={theirs.pk}").status_code == 404
    assert owner_client.get(f"{URL}?from=x").status_code == 404


def test_the_form_labels_and_describes_every_input(owner_client, checkpoint):
    html = owner_client.get(URL).content.decode()
    assert 'aria-describedby="id_temperature_b_helptext"' in html
    assert 'id="id_temperature_b_helptext"' in html
    html = owner_client.post(URL, valid(temperature_b="9")).content.decode()
    assert 'aria-describedby="id_temperature_b_helptext id_temperature_b_error"' in html
    assert 'id="id_temperature_b_error"' in html


# --- the compare page ----------------------------------------------------------------------------------------


def test_it_shows_two_jobs_side_by_side(owner_client, make_job, second):
    a = make_job(status=Job.Status.SUCCEEDED, output="Paris.", finish_reason="stop", prompt_tokens=30,
                 completion_tokens=3, temperature=0.0)
    b = make_job(checkpoint=second, status=Job.Status.SUCCEEDED, output="It is **Paris**.", finish_reason="length",
                 prompt_tokens=30, completion_tokens=6, temperature=0.9)
    response = owner_client.get(f"/compare/?a={a.pk}&b={b.pk}")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("data-job ") == 2
    for job in (a, b):
        assert f'data-stream-url="/jobs/{job.pk}/stream"' in html and f'href="/jobs/{job.pk}/"' in html
    assert "SmolLM2-finetuned" in html and "<strong>Paris</strong>" in html
    assert '<strong class="differs">temperature 0.9</strong>' in html and "max tokens 16 ·" in html  # what differs
    assert "Stopped at the token limit." in html and "Stopped at the end of the answer." in html
    assert html.count("What is the capital of France?") == 1  # the same input: shown once
    assert response.context["shared"] == a


def test_it_shows_each_input_when_they_differ(owner_client, make_job):
    a, b = make_job(prompt="One?"), make_job(prompt="Two?")
    response = owner_client.get(f"/compare/?a={a.pk}&b={b.pk}")
    assert response.context["shared"] is None
    assert "One?" in response.content.decode() and "Two?" in response.content.decode()


@pytest.mark.parametrize("query", ["", "?a=1", "?a=x&b=2", "?a=1&b=999999"])
def test_it_answers_404_without_two_jobs(owner_client, make_job, query):
    make_job()
    assert owner_client.get(f"/compare/{query}").status_code == 404


def test_it_answers_404_for_anybody_elses_job(owner_client, other_client, other, make_job):
    a, b = make_job(), make_job()
    assert owner_client.get(f"/compare/?a={a.pk}&b={b.pk}").status_code == 200
    assert other_client.get(f"/compare/?a={a.pk}&b={b.pk}").status_code == 404
    theirs = make_job(owner=other)
    assert owner_client.get(f"/compare/?a={a.pk}&b={theirs.pk}").status_code == 404


def test_stop_returns_to_the_compare_page(owner_client, make_job):
    a, b = make_job(), make_job()
    here = f"/compare/?a={a.pk}&b={b.pk}"
    assert f'name="next" value="{here.replace("&", "&amp;")}"' in owner_client.get(here).content.decode()
    response = owner_client.post(f"/jobs/{b.pk}/cancel/", {"next": here})
    assert (response.status_code, response["Location"]) == (302, here)
    b.refresh_from_db()
    assert b.status == Job.Status.CANCELLED


def test_a_stranger_is_sent_to_sign_in(client, make_job):
    a, b = make_job(), make_job()
    for url in (f"/compare/?a={a.pk}&b={b.pk}", URL):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_job_page_and_the_new_job_form_link_to_compare(owner_client, make_job):
    job = make_job()
    assert f'href="/compare/new/?from={job.pk}"' in owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'href="/compare/new/"' in owner_client.get("/jobs/new/").content.decode()
