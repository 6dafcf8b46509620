"""JobForm through POST /jobs/new/: each bad input is an error next to its field and no job is created."""
from __future__ import annotations

import pytest

from generation.forms import JobForm
from generation.models import Job
from modelzoo import pool
from modelzoo.models import Checkpoint

pytestmark = pytest.mark.django_db

URL = "/jobs/new/"


def valid(**overrides) -> dict:
    data = {"task": "qa", "prompt": "What is the capital of France?", "context": "", "language": "python",
            "length": "medium"}
    data.update(overrides)
    return data


def post_errors(client, data) -> dict:
    response = client.post(URL, data)
    assert response.status_code == 200  # the form again, not a redirect
    assert Job.objects.count() == 0
    return response.context["form"].errors


def test_it_creates_a_job_from_a_valid_form(owner_client, checkpoint, owner):
    response = owner_client.post(URL, valid())
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.owner, job.task, job.checkpoint, job.status) == (owner, "qa", checkpoint, Job.Status.QUEUED)
    assert job.prompt_tokens > 0


@pytest.mark.parametrize("prompt", ["", "   \n  "])
def test_it_rejects_an_empty_prompt(owner_client, checkpoint, prompt):
    errors = post_errors(owner_client, valid(prompt=prompt))
    assert errors["prompt"] == ["Enter a prompt."]


def test_it_rejects_an_unknown_task(owner_client, checkpoint):
    errors = post_errors(owner_client, valid(task="poetry"))
    assert "task" in errors
    assert "not one of the available choices" in errors["task"][0]


def test_it_rejects_an_unknown_checkpoint(owner_client, checkpoint):
    errors = post_errors(owner_client, valid(checkpoint="999999"))
    assert errors["checkpoint"] == ["Choose one of the available checkpoints."]


@pytest.mark.parametrize("status", ["uploaded", "validating", "rejected", "retired"])
def test_it_rejects_a_checkpoint_that_is_not_ready(owner_client, checkpoint, status):
    other = Checkpoint.objects.create(name=f"ft-{status}", format="gguf", path="/nowhere.gguf", status=status)
    errors = post_errors(owner_client, valid(checkpoint=str(other.pk)))
    assert errors["checkpoint"] == ["Choose one of the available checkpoints."]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "-0.1"), ("temperature", "2.5"), ("temperature", "hot"),
        ("top_p", "0"), ("top_p", "1.5"),
        ("top_k", "-1"), ("top_k", "1001"),
        ("max_tokens", "0"), ("max_tokens", "100000"),
        ("seed", "-5"), ("seed", str(2**63)),
        ("repetition_penalty", "0"), ("repetition_penalty", "3"),
    ],
)
def test_it_rejects_out_of_range_sampling_values(owner_client, checkpoint, field, value):
    errors = post_errors(owner_client, valid(**{field: value}))
    assert list(errors) == [field]


def test_it_rejects_a_prompt_longer_than_the_context_window(owner_client, checkpoint):
    window = pool.context_window(checkpoint)
    errors = post_errors(owner_client, valid(prompt="hello world " * window))
    assert list(errors) == ["prompt"]
    assert f"{window}-token context window" in errors["prompt"][0]


def test_it_rejects_max_tokens_that_do_not_fit_after_the_prompt(owner_client, checkpoint):
    window = pool.context_window(checkpoint)
    form = JobForm(valid(max_tokens=str(min(window, 8192))))
    assert not form.is_valid()
    errors = post_errors(owner_client, valid(max_tokens=str(min(window, 8192))))
    assert list(errors) == ["max_tokens"]
    assert f"at most {window - form.prompt_tokens} new tokens fit" in errors["max_tokens"][0]


def test_it_counts_the_context_of_a_qa_job(owner_client, checkpoint):
    window = pool.context_window(checkpoint)
    errors = post_errors(owner_client, valid(context="The sky is blue. " * window))
    assert list(errors) == ["context"]


def test_it_fills_blank_sampling_fields_with_the_task_defaults(checkpoint):
    form = JobForm(valid(task="summarize", prompt="Some long text.", length="short"))
    assert form.is_valid(), form.errors
    kwargs = form.job_kwargs()
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"], kwargs["max_tokens"],
            kwargs["repetition_penalty"], kwargs["seed"]) == (0.3, 0.9, 40, 256, 1.1, None)
    assert kwargs["options"] == {"length": "short"}
    assert kwargs["context"] == ""


def test_it_keeps_the_language_of_a_code_job(checkpoint):
    form = JobForm(valid(task="code", prompt="reverse a list", language="rust", context="ignored"))
    assert form.is_valid(), form.errors
    assert form.job_kwargs()["options"] == {"language": "rust"}
    assert form.job_kwargs()["context"] == ""


def test_it_preselects_the_tasks_default_and_lists_the_ready_checkpoints(checkpoint):
    field = JobForm().fields["checkpoint"]
    assert field.initial is None and field.empty_label == "The task's default"
    assert list(field.queryset) == [checkpoint]
