"""services.job_create: a queued job, enqueued once the transaction commits; a dead broker fails it at once."""
from __future__ import annotations

import time

import pytest

from generation import services
from generation.models import Job
from llmsite.celery import app as celery_app
from llmsite.localredis import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr("generation.tasks.run_job.apply_async",
                        lambda args=None, **kwargs: calls.append({"args": args, **kwargs}))
    return calls


@pytest.fixture
def dead_broker(monkeypatch) -> str:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setitem(celery_app.conf, "broker_url", url)
    return url


def create(owner, checkpoint, **fields) -> Job:
    return services.job_create(owner=owner, task="qa", prompt="Why?", checkpoint=checkpoint, **fields)


def test_it_creates_a_queued_job(owner, checkpoint, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = create(owner, checkpoint, context="ctx", temperature=0.5, max_tokens=64, seed=3)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.context, job.temperature, job.max_tokens, job.seed) == (
        Job.Status.QUEUED, 0, "ctx", 0.5, 64, 3)
    assert published == []  # nothing is sent before the commit
    assert len(callbacks) == 1


def test_it_enqueues_the_job_id_after_commit(owner, checkpoint, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = create(owner, checkpoint)
    assert [call["args"] for call in published] == [[job.pk]]


def test_it_fails_the_job_fast_when_the_broker_is_down(owner, checkpoint, dead_broker,
                                                       django_capture_on_commit_callbacks):
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        job = create(owner, checkpoint)
    assert time.monotonic() - started < 10
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("Could not queue the job: the job queue (Redis) is unreachable")
    assert job.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_it_tells_the_user_when_redis_is_down_at_submit(owner_client, checkpoint, dead_broker):
    response = owner_client.post("/jobs/new/", {"task": "qa", "prompt": "Why is the sky blue?"}, follow=True)
    job = Job.objects.get()
    assert response.redirect_chain == [(f"/jobs/{job.pk}/", 302)]
    assert job.status == Job.Status.FAILED
    assert "unreachable" in job.error
    content = response.content.decode()
    assert 'role="alert">Could not queue the job: the job queue (Redis) is unreachable' in content
    assert "Failed" in content


@pytest.mark.django_db(transaction=True)
def test_it_publishes_to_the_real_redis(owner, checkpoint):
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("celery")
    job = create(owner, checkpoint)
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert client.llen("celery") == 1
    client.delete("celery")
