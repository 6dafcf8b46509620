"""runner.job_claim / job_run: one delivery does the work; redeliveries after a lost worker are bounded."""
from __future__ import annotations

import contextlib

import pytest

from generation import runner
from generation.models import Job
from generation.tasks import run_job
from tests.generation.fakes import FakeEngine, FakeInfo

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(monkeypatch) -> FakeEngine:
    engine = FakeEngine()
    monkeypatch.setattr("modelzoo.pool.serving", lambda checkpoint: contextlib.nullcontext(engine))
    monkeypatch.setattr("modelzoo.pool.checkpoint_info", lambda checkpoint: FakeInfo())
    return engine


def test_it_claims_a_queued_job(make_job):
    job = make_job()
    claimed = runner.job_claim(job_id=job.pk)
    assert claimed is not None
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert job.attempts == 1
    assert job.started_at is not None


def test_it_does_nothing_on_a_second_claim(make_job):
    job = make_job()
    runner.job_claim(job_id=job.pk)
    job.refresh_from_db()
    started_at = job.started_at
    assert runner.job_claim(job_id=job.pk) is None
    job.refresh_from_db()
    assert (job.status, job.attempts, job.started_at) == (Job.Status.RUNNING, 1, started_at)


def test_it_reclaims_a_redelivered_running_job(make_job):
    job = make_job(status=Job.Status.RUNNING, attempts=1, output="partial")
    claimed = runner.job_claim(job_id=job.pk, redelivered=True)
    assert claimed is not None
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert job.attempts == 2
    assert job.output == ""


def test_it_fails_a_redelivered_job_past_the_attempt_limit(make_job, settings):
    settings.JOB_MAX_ATTEMPTS = 3
    job = make_job(status=Job.Status.RUNNING, attempts=3)
    assert runner.job_claim(job_id=job.pk, redelivered=True) is None
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "worker lost 3 times; giving up"
    assert job.finished_at is not None


@pytest.mark.parametrize("status", [Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED])
def test_it_ignores_redelivery_of_a_finished_job(make_job, status):
    job = make_job(status=status, attempts=1, output="done")
    assert runner.job_claim(job_id=job.pk, redelivered=True) is None
    job.refresh_from_db()
    assert (job.status, job.attempts, job.output) == (status, 1, "done")


def test_it_ignores_a_deleted_job(engine):
    assert runner.job_run(job_id=123456) is None
    assert engine.calls == []


def test_it_does_not_run_a_job_claimed_by_another_delivery(make_job, engine):
    job = make_job(status=Job.Status.RUNNING, attempts=1)
    assert runner.job_run(job_id=job.pk) is None
    assert engine.calls == []
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING


def test_it_runs_a_redelivered_job_again(make_job, engine):
    job = make_job(status=Job.Status.RUNNING, attempts=1)
    runner.job_run(job_id=job.pk, redelivered=True)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.attempts == 2
    assert len(engine.calls) == 1


def test_it_passes_the_redelivered_flag_from_the_task(monkeypatch):
    calls = []
    monkeypatch.setattr("generation.runner.job_run", lambda **kwargs: calls.append(kwargs))
    run_job.push_request(delivery_info={"redelivered": True})
    try:
        run_job.run(7)
    finally:
        run_job.pop_request()
    run_job.push_request(delivery_info={"redelivered": False})
    try:
        run_job.run(8)
    finally:
        run_job.pop_request()
    assert calls == [{"job_id": 7, "redelivered": True}, {"job_id": 8, "redelivered": False}]


def test_the_task_acks_late():
    assert run_job.acks_late is True
    assert run_job.name == "generation.run_job"


def test_the_worker_preloads_the_default_checkpoint(monkeypatch, checkpoint):
    from generation.fleet import worker

    loaded = []
    monkeypatch.setattr("modelzoo.pool.engine_for", lambda ckpt: loaded.append(ckpt.pk))
    worker._preload_default()
    assert loaded == [checkpoint.pk]
