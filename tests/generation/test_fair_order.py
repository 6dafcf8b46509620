"""Workers take queued jobs in fair order: the least-served user's oldest job first, whatever arrived first."""
from __future__ import annotations

import pytest

from generation import runner
from generation.models import Job
from generation.selectors import jobs_in_fair_order

pytestmark = pytest.mark.django_db


def test_it_puts_a_newcomer_ahead_of_another_users_backlog(make_job, owner, other, checkpoint):
    backlog = [make_job(owner=owner) for _ in range(5)]
    make_job(owner=owner, status=Job.Status.RUNNING)
    newcomer = make_job(owner=other)
    assert jobs_in_fair_order(checkpoint_id=checkpoint.pk) == [newcomer.pk, backlog[0].pk]


def test_it_alternates_between_users_with_as_many_running_jobs(make_job, owner, other, checkpoint):
    a1, b1, a2 = make_job(owner=owner), make_job(owner=other), make_job(owner=owner)
    assert jobs_in_fair_order(checkpoint_id=checkpoint.pk) == [a1.pk, b1.pk]
    claimed = [runner.job_claim(job_id=a1.pk).pk for _ in range(3)]
    assert claimed == [a1.pk, b1.pk, a2.pk]


def test_a_message_claims_the_fair_choice_not_its_own_job(make_job, owner, other):
    first = make_job(owner=owner)
    make_job(owner=owner, status=Job.Status.RUNNING)
    theirs = make_job(owner=other)
    claimed = runner.job_claim(job_id=first.pk)  # the message of `first`...
    assert claimed.pk == theirs.pk  # ...runs the job of the user with nothing running
    assert runner.job_claim(job_id=theirs.pk).pk == first.pk  # and the other message runs `first`
    assert runner.job_claim(job_id=first.pk) is None  # nothing left


def test_it_only_takes_jobs_of_the_messages_checkpoint(make_job, owner, checkpoint):
    from modelzoo.models import Checkpoint

    elsewhere = Checkpoint.objects.create(name="other-model", format="gguf", path=checkpoint.path, status="ready")
    other_job = make_job(checkpoint=elsewhere)
    assert jobs_in_fair_order(checkpoint_id=checkpoint.pk) == []
    assert runner.job_claim(job_id=other_job.pk).pk == other_job.pk
