"""/jobs/new/?rerun=<id> prefills the form from one of the user's jobs."""
from __future__ import annotations

import pytest

from generation.models import Job
from modelzoo.models import Checkpoint

pytestmark = pytest.mark.django_db


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
