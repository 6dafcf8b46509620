"""Quotas hold under concurrency: the check and the insert happen under one admission lock (real Redis)."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from generation import limits, services
from generation.models import Job
from llmsite import redis_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr("generation.tasks.send_run_job", lambda *args, **kwargs: None)  # admission only
    redis_client.client().delete(limits.ADMISSION_LOCK_KEY)


def burst(*, users: list, per_user: int) -> tuple[list[Job], list[limits.QuotaExceeded]]:
    accepted: list[Job] = []
    refused: list[limits.QuotaExceeded] = []
    lock = threading.Lock()
    start = threading.Barrier(len(users) * per_user)

    def submit(user) -> None:
        start.wait()
        try:
            jobs = services.jobs_submit(owner=user, inputs=[{"task": "qa", "prompt": "Why?", "checkpoint": checkpoint}])
            with lock:
                accepted.extend(jobs)
        except limits.QuotaExceeded as exc:
            with lock:
                refused.append(exc)
        finally:
            connection.close()

    from modelzoo.models import Checkpoint

    checkpoint = Checkpoint.default()
    threads = [threading.Thread(target=submit, args=(user,)) for user in users for _ in range(per_user)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return accepted, refused


def test_a_burst_never_passes_the_unfinished_jobs_cap(owner, other, checkpoint, settings):
    settings.API_MAX_ACTIVE_JOBS_PER_USER = 4
    settings.API_RATE_LIMIT_PER_MIN = 0
    accepted, refused = burst(users=[owner, other], per_user=10)
    assert Job.objects.filter(owner=owner).count() == 4
    assert Job.objects.filter(owner=other).count() == 4
    assert len(accepted) == 8 and len(refused) == 12
    assert {exc.status for exc in refused} == {429}


def test_a_burst_never_passes_the_queue_length(owner, other, checkpoint, settings):
    settings.API_MAX_ACTIVE_JOBS_PER_USER = 0
    settings.API_RATE_LIMIT_PER_MIN = 0
    settings.QUEUE_MAX_LENGTH = 5
    accepted, refused = burst(users=[owner, other], per_user=6)
    assert Job.objects.count() == 5 and len(refused) == 7
    assert {exc.code for exc in refused} == {"queue_full"}
