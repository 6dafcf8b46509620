"""Per-task defaults: an admin makes a ready checkpoint the default for code, qa or summarize; a job whose
user picks no checkpoint runs on its task's default, other tasks on the overall default."""
from __future__ import annotations

import importlib

import pytest

from generation.forms import JobForm
from modelzoo import services
from modelzoo.models import Checkpoint, TaskDefault

pytestmark = pytest.mark.django_db


@pytest.fixture
def second(checkpoint) -> Checkpoint:
    """Another ready checkpoint (the same bundled file under another name)."""
    bundled = dict(importlib.import_module("modelzoo.migrations.0002_bundled_smollm2").BUNDLED)
    bundled.update(name="smollm2-qa-tuned", is_default=False)
    return Checkpoint.objects.create(**bundled)


def make_default_for(client, checkpoint: Checkpoint, task: str):
    return client.post("/admin/modelzoo/checkpoint/", {"action": f"make_default_for_{task}",
                                                       "_selected_action": [checkpoint.pk]}, follow=True)


def chosen_checkpoint(task: str, **data) -> Checkpoint:
    form = JobForm(data={"task": task, "prompt": "Summarize: the sky is blue.", "max_tokens": 8, **data})
    assert form.is_valid(), form.errors
    return form.cleaned_data["checkpoint"]


def test_an_admin_makes_a_checkpoint_the_default_for_one_task(staff_client, checkpoint, second):
    response = make_default_for(staff_client, second, "qa")
    assert "is now the default for qa jobs" in response.content.decode()
    assert TaskDefault.objects.get(task="qa").checkpoint == second
    assert Checkpoint.default(task="qa") == second
    assert Checkpoint.default(task="code") == checkpoint == Checkpoint.default()
    changelist = staff_client.get("/admin/modelzoo/checkpoint/").content.decode()
    assert "Default for" in changelist


def test_a_job_without_a_chosen_checkpoint_runs_on_its_tasks_default(staff_client, checkpoint, second):
    make_default_for(staff_client, second, "summarize")
    assert chosen_checkpoint("summarize") == second
    assert chosen_checkpoint("code") == checkpoint
    assert chosen_checkpoint("summarize", checkpoint=checkpoint.pk) == checkpoint  # an explicit pick wins
    labels = [label for _, label in JobForm().fields["checkpoint"].choices]
    assert "smollm2-qa-tuned (default for summarize)" in labels and labels[0] == "The task's default"


def test_a_checkpoint_that_is_not_ready_cannot_become_a_task_default(staff_client, second):
    Checkpoint.objects.filter(pk=second.pk).update(status=Checkpoint.Status.VALIDATING)
    response = make_default_for(staff_client, second, "code")
    assert "not ready" in response.content.decode()
    assert not TaskDefault.objects.exists()
    Checkpoint.objects.filter(pk=second.pk).update(status=Checkpoint.Status.READY)
    with pytest.raises(ValueError, match="unknown task"):
        services.checkpoint_make_default(checkpoint=Checkpoint.objects.get(pk=second.pk), task="poetry")


def test_retiring_a_task_default_falls_back_to_the_overall_default(staff_client, checkpoint, second):
    make_default_for(staff_client, second, "code")
    services.checkpoint_retire(checkpoint=second)
    assert not TaskDefault.objects.exists()
    assert Checkpoint.default(task="code") == checkpoint
