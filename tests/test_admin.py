"""Admins see jobs and checkpoints in /admin/; the bundled checkpoint is there as the default."""
import pytest


@pytest.mark.django_db
def test_it_lists_the_bundled_checkpoint_as_default(staff_client, checkpoint):
    response = staff_client.get("/admin/modelzoo/checkpoint/")
    assert response.status_code == 200
    assert checkpoint.name in response.content.decode()
    assert checkpoint.is_default


@pytest.mark.django_db
def test_it_lists_and_searches_every_users_jobs(staff_client, make_job, other, checkpoint):
    mine = make_job(prompt="alpha question")
    theirs = make_job(owner=other, prompt="beta question")
    response = staff_client.get("/admin/generation/job/")
    assert response.status_code == 200
    assert "alpha question" in response.content.decode() and "beta question" in response.content.decode()

    response = staff_client.get("/admin/generation/job/", {"q": "beta"})
    content = response.content.decode()
    assert "beta question" in content and "alpha question" not in content
    assert staff_client.get(f"/admin/generation/job/{theirs.pk}/change/").status_code == 200
    assert mine.pk != theirs.pk


@pytest.mark.django_db
def test_it_keeps_the_admin_from_users_who_are_not_staff(owner_client):
    response = owner_client.get("/admin/generation/job/")
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")


@pytest.mark.django_db
def test_it_shows_the_live_workers_and_queue_depths(staff_client, checkpoint):
    from generation.fleet import registry
    from llmsite import redis_client

    redis_client.client().flushdb()
    registry.publish(name="w1@host", holds={checkpoint.pk: 2048}, status={
        "resident": [checkpoint.pk], "loading": [], "memory_used_bytes": 2048, "memory_budget_bytes": 8192,
        "running_jobs": 3, "loads": 5, "evictions": 1, "heartbeat_at": 0,
    })
    redis_client.client().lpush(f"checkpoint.{checkpoint.pk}", "m")
    try:
        assert "/admin/workers/" in staff_client.get("/admin/modelzoo/checkpoint/").content.decode()
        content = staff_client.get("/admin/workers/").content.decode()
    finally:
        redis_client.client().flushdb()
    workers = content[content.index('id="workers"'):]
    assert "w1@host" in workers and checkpoint.name in workers
    assert "2.0\xa0KB / 8.0\xa0KB" in workers
    assert f"<td>checkpoint.{checkpoint.pk}</td><td>1</td>" in workers


@pytest.mark.django_db
def test_it_says_when_the_worker_status_cannot_be_read(staff_client, checkpoint, monkeypatch):
    from generation.fleet import views

    def unreadable():
        raise ConnectionError("redis is down")

    monkeypatch.setattr(views, "workers_overview", unreadable)
    response = staff_client.get("/admin/workers/")
    assert response.status_code == 200
    assert "Worker status unavailable: redis is down" in response.content.decode()
    assert staff_client.get("/admin/modelzoo/checkpoint/").status_code == 200


@pytest.mark.django_db
def test_it_keeps_the_workers_page_from_users_who_are_not_staff(owner_client):
    response = owner_client.get("/admin/workers/")
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
