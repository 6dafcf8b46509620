"""/healthz: database, Redis and worker liveness as JSON; 200 only when all are up."""
from __future__ import annotations

import pytest

from generation.fleet import registry
from llmsite import redis_client
from llmsite.celery import app as celery_app
from llmsite.localredis import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]



class FakeInspect:
    def __init__(self, replies):
        self.replies = replies

    def ping(self):
        return self.replies


def test_it_is_ok_when_everything_answers(client, monkeypatch):
    monkeypatch.setattr(celery_app.control, "inspect",
                        lambda **kwargs: FakeInspect({"worker1@host": {"ok": "pong"}}))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "database": {"ok": True},
        "redis": {"ok": True},
        "jobs": {"ok": True, "overdue": 0},
        "workers": {"ok": True, "count": 1, "names": ["worker1@host"], "live": []},
        "queues": {"celery": 0},
    }


def test_it_fails_while_a_job_is_past_its_deadline(client, monkeypatch, make_job, settings):
    from datetime import timedelta

    from django.utils import timezone

    monkeypatch.setattr(celery_app.control, "inspect",
                        lambda **kwargs: FakeInspect({"worker1@host": {"ok": "pong"}}))
    now = timezone.now()
    make_job(status="running", started_at=now, lease_expires_at=now + timedelta(seconds=30))  # fine
    make_job(status="running", started_at=now - timedelta(seconds=settings.JOB_TIME_LIMIT_S + 120),
             lease_expires_at=now + timedelta(seconds=30))  # ran far past its limit
    make_job(status="running", started_at=now, lease_expires_at=now - timedelta(seconds=1))  # its worker is gone
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["jobs"] == {"ok": False, "overdue": 2, "error": "2 job(s) past their deadline"}


def test_it_shows_what_each_live_worker_holds_and_the_queue_depths(client, monkeypatch, checkpoint):
    monkeypatch.setattr(celery_app.control, "inspect",
                        lambda **kwargs: FakeInspect({"worker1@host": {"ok": "pong"}}))
    registry.publish(name="worker1@host", holds={checkpoint.pk: 1000}, status={
        "resident": [checkpoint.pk], "loading": [], "memory_used_bytes": 1000, "memory_budget_bytes": 4000,
        "running_jobs": 2, "loads": 1, "evictions": 0, "heartbeat_at": 0,
    })
    registry.publish(name="gone@host", holds={}, status={"resident": []})
    redis_client.client().zadd(registry.WORKERS_KEY, {"gone@host": 1.0})  # its last heartbeat is long past
    redis_client.client().lpush("celery", "m1", "m2")
    redis_client.client().lpush(f"checkpoint.{checkpoint.pk}", "m3")

    body = client.get("/healthz").json()

    [live] = body["workers"]["live"]
    assert live["name"] == "worker1@host"
    assert live["resident"] == [{"id": checkpoint.pk, "name": checkpoint.name}]
    assert (live["memory_used_bytes"], live["memory_budget_bytes"], live["running_jobs"], live["loads"]) == (
        1000, 4000, 2, 1)
    assert body["queues"] == {"celery": 2, f"checkpoint.{checkpoint.pk}": 1}


def test_it_fails_without_workers(client, settings):
    settings.HEALTHZ_TIMEOUT_S = 0.3
    response = client.get("/healthz")  # the test Redis is real; no worker is running
    assert response.status_code == 503
    data = response.json()
    assert data["status"] == "fail"
    assert data["redis"] == {"ok": True}
    assert data["workers"] == {"ok": False, "count": 0, "names": [], "error": "no worker answered", "live": []}


def test_it_fails_when_redis_is_down(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    data = response.json()
    assert data["database"] == {"ok": True}
    assert data["redis"]["ok"] is False and data["redis"]["error"]
    assert data["workers"]["ok"] is False


def test_it_needs_no_login_and_only_get(client):
    assert client.post("/healthz").status_code == 405
