"""runner.jobs_reconcile: jobs whose worker is gone are queued again or failed, and queued jobs whose message
is gone are published again (against the real test Redis, which holds no messages here)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import runner
from generation.models import Job
from llmsite import redis_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]



@pytest.fixture
def published():
    sent: list[int] = []
    return sent


def reconcile(sent: list[int]) -> dict[str, int]:
    return runner.jobs_reconcile(publish=lambda job: sent.append(job.pk))


def test_it_queues_again_a_running_job_whose_lease_expired(make_job, published):
    gone = make_job(status=Job.Status.RUNNING, attempts=1, output="half",
                    lease_expires_at=timezone.now() - timedelta(seconds=1))
    alive = make_job(status=Job.Status.RUNNING, attempts=1, lease_expires_at=timezone.now() + timedelta(seconds=30))
    redis_client.client().hset("unacked", "tag", "the dead worker's message, until the visibility timeout")
    assert reconcile(published) == {"failed": 0, "requeued": 1, "published": 1}
    gone.refresh_from_db(), alive.refresh_from_db()
    assert (gone.status, gone.output, gone.attempts) == (Job.Status.QUEUED, "", 1)
    assert alive.status == Job.Status.RUNNING
    assert published == [gone.pk]


def test_it_fails_a_job_that_lost_its_worker_too_often(make_job, published, settings):
    poison = make_job(status=Job.Status.RUNNING, attempts=settings.JOB_MAX_ATTEMPTS,
                      lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert reconcile(published)["failed"] == 1
    poison.refresh_from_db()
    assert poison.status == Job.Status.FAILED
    assert poison.error == f"worker lost {settings.JOB_MAX_ATTEMPTS} times; giving up"
    assert published == []


def test_it_publishes_queued_jobs_no_message_stands_for(make_job, published):
    jobs = [make_job() for _ in range(3)]
    redis_client.client().lpush("celery", "one message")  # one of the three still has its message
    assert reconcile(published)["published"] == 2
    assert published == [jobs[0].pk, jobs[1].pk]
    assert reconcile([])["published"] == 2  # idempotent while the messages are not there


def test_a_redelivered_message_takes_over_only_an_expired_lease(make_job):
    running = make_job(status=Job.Status.RUNNING, attempts=1, lease_expires_at=timezone.now() + timedelta(seconds=30))
    assert runner.job_claim(job_id=running.pk, redelivered=True) is None  # its worker is alive
    Job.objects.filter(pk=running.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    claimed = runner.job_claim(job_id=running.pk, redelivered=True)
    assert claimed.pk == running.pk and claimed.attempts == 2
    assert claimed.lease_expires_at > timezone.now()
