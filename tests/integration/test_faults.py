"""Every job ends, whatever fails: Redis losing its data, a worker killed mid-job (again and again), the
database dropping its connections. Real workers with the bundled model, the test Redis and database; leases
and the reconciler are made fast here (JOB_LEASE_S, RECONCILE_INTERVAL_S) so that recovery takes seconds."""
from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.db import connection

from generation import services
from generation.models import Job
from llmsite import redis_client
from tests.live_services import WorkerProcess, database_url

pytestmark = pytest.mark.django_db(transaction=True)

#: Fast recovery, and a time limit that a busy 2-core host loading the model for a requeued job still meets.
FAST_RECOVERY = {"JOB_LEASE_S": "6", "RECONCILE_INTERVAL_S": "2", "JOB_TIME_LIMIT_S": "180",
                 "CELERY_VISIBILITY_TIMEOUT_S": "240"}
#: Time limit + margin: what "ends in time" means for these tests.
ENDS_WITHIN_S = 180 + 60


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        process = WorkerProcess(database_url(connection.settings_dict), name=name, env=FAST_RECOVERY)
        process.start()
        started.append(process)
        return process

    redis_client.client().flushdb()
    yield start
    for process in started:
        process.stop()


def create(owner, checkpoint, *, max_tokens: int) -> Job:
    [job] = services.jobs_submit(owner=owner, inputs=[{
        "task": "qa", "prompt": "Tell me a long story about a dragon and a castle.", "checkpoint": checkpoint,
        "max_tokens": max_tokens, "temperature": 0.0}])
    return job


def wait_until(predicate, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not {what} within {timeout_s} s"
        time.sleep(0.1)


def running_with(job_id: int, *, attempts: int) -> bool:
    job = Job.objects.get(pk=job_id)
    return job.status == Job.Status.RUNNING and job.attempts == attempts


def test_no_job_stays_unfinished_when_redis_loses_its_data(workers, owner, checkpoint, wait_for_job):
    first = workers("worker1")
    running = create(owner, checkpoint, max_tokens=24)
    wait_until(lambda: running_with(running.pk, attempts=1), timeout_s=120, what="running")
    first.kill()  # the running job's worker is gone...
    queued = [create(owner, checkpoint, max_tokens=4) for _ in range(3)]
    redis_client.client().flushall()  # ...and Redis restarts without its data: every message is gone
    lost_at = time.monotonic()
    second = workers("worker2")
    for job_id in [running.pk, *(job.pk for job in queued)]:
        job = wait_for_job(job_id, timeout_s=ENDS_WITHIN_S - (time.monotonic() - lost_at))
        assert job.status == Job.Status.SUCCEEDED, (job.error, second.log()[-3000:])
    assert Job.objects.get(pk=running.pk).attempts == 2
    assert {Job.objects.get(pk=job.pk).attempts for job in queued} == {1}
    assert "Reconciled" in second.log()


def test_a_job_that_kills_its_worker_every_time_fails_after_its_attempts(workers, owner, checkpoint, wait_for_job):
    poison = create(owner, checkpoint, max_tokens=24)
    for attempt in range(1, settings.JOB_MAX_ATTEMPTS + 1):
        worker = workers(f"worker{attempt}")
        wait_until(lambda attempt=attempt: running_with(poison.pk, attempts=attempt), timeout_s=120, what=f"attempt {attempt}")
        worker.kill()
    last = workers("worker-last")
    job = wait_for_job(poison.pk, timeout_s=ENDS_WITHIN_S)
    assert job.status == Job.Status.FAILED, last.log()[-3000:]
    assert job.error == f"worker lost {settings.JOB_MAX_ATTEMPTS} times; giving up"
    assert job.attempts == settings.JOB_MAX_ATTEMPTS
    other = create(owner, checkpoint, max_tokens=4)  # the site still serves
    assert wait_for_job(other.pk).status == Job.Status.SUCCEEDED


@pytest.mark.postgres
def test_jobs_survive_the_database_dropping_its_connections(workers, owner, checkpoint, wait_for_job):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://... (make test does when one answers)")
    worker = workers("worker1")
    jobs = [create(owner, checkpoint, max_tokens=384) for _ in range(2)]  # seconds of work: cut mid-job
    wait_until(lambda: Job.objects.filter(pk=jobs[0].pk, status=Job.Status.RUNNING).exclude(output="").exists(),
               timeout_s=120, what="streaming")
    with connection.cursor() as cursor:  # every other session of this database: the worker's, mid-job
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert cursor.fetchone()[0] >= 1
    connection.close()
    for job in jobs:
        job = wait_for_job(job.pk, timeout_s=ENDS_WITHIN_S)
        assert job.status == Job.Status.SUCCEEDED, (job.error, worker.log()[-3000:])
        assert job.output and job.completion_tokens
