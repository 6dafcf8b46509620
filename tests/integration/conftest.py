"""Integration tests run against real parts: the test run's Redis, a real Celery worker process holding
the bundled model, and the test database, which the worker shares (so the tests commit: transactional)."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from django.db import DatabaseError, connection

from generation.models import Job


@pytest.fixture
def wait_for_job() -> Callable[..., Job]:
    def wait(job_id: int, *, until: Callable[[Job], bool] = lambda job: job.is_finished, timeout_s: float = 180) -> Job:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                job = Job.objects.get(pk=job_id)
            except DatabaseError:  # a test that drops the database's connections drops this one too
                connection.close()
                continue
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job.status} after {timeout_s}s: {job.error!r}")
            time.sleep(0.2)

    return wait


@pytest.fixture
def warm_worker(checkpoint, worker):
    """The worker, once it holds the model (so a job's time limit is not spent loading it)."""
    deadline = time.monotonic() + 180
    while "is resident" not in worker.log():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    return worker
