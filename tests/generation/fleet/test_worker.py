"""generation.fleet.worker in this process against the real test Redis: what a worker does when its
pool loads or evicts a checkpoint. The control messages to the worker's own consumer are recorded instead
of sent (no consumer runs here)."""
from __future__ import annotations

import pytest

from generation.fleet import registry, worker
from llmsite import redis_client
from llmsite.celery import app

pytestmark = pytest.mark.django_db


@pytest.fixture
def me(monkeypatch):
    redis_client.client().flushdb()
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(app.control, "add_consumer", lambda queue, destination: sent.append(("add", queue)))
    monkeypatch.setattr(app.control, "cancel_consumer", lambda queue, destination: sent.append(("cancel", queue)))
    monkeypatch.setattr(worker, "_me", worker._Worker())
    worker._me.name = "w1@host"
    yield sent
    redis_client.client().flushdb()


def test_it_holds_and_consumes_a_loaded_checkpoint(me, monkeypatch):
    from modelzoo import pool

    monkeypatch.setattr(pool, "resident_sizes", lambda: {7: 500})
    worker._on_pool_event("loaded", 7)
    [state] = registry.live_workers()
    assert (state.name, state.holds) == ("w1@host", {7: 500})
    assert ("add", "checkpoint.7") in me
    assert registry.live_statuses()[0]["loads"] == 1


def test_it_moves_the_queue_of_an_evicted_checkpoint_back_to_the_default_queue(me):
    redis_client.client().lpush("checkpoint.7", "m1", "m2")
    worker._on_pool_event("evicted", 7)
    assert ("cancel", "checkpoint.7") in me
    assert redis_client.client().llen("checkpoint.7") == 0
    assert redis_client.client().llen("celery") == 2


def test_it_leaves_the_queue_to_another_live_holder(me):
    registry.publish(name="w2@host", holds={7: 500}, status={})
    redis_client.client().lpush("checkpoint.7", "m1")
    worker._on_pool_event("evicted", 7)
    assert redis_client.client().llen("checkpoint.7") == 1
    assert redis_client.client().llen("celery") == 0


def test_it_drops_a_claim_whose_load_never_happened(me, checkpoint, monkeypatch):
    from modelzoo import pool

    monkeypatch.setattr(pool, "resident_sizes", lambda: {})  # whatever earlier tests left in this process's pool
    pool.checkpoint_info(checkpoint)  # read the metadata first: on a busy host that outlasts a heartbeat's life
    worker._publish()  # alive, holding nothing
    worker._claim(checkpoint)
    [state] = registry.live_workers()
    assert checkpoint.pk in state.holds
    worker._release_unloaded_claim(checkpoint.pk)
    assert worker._me.claims == {}
    assert registry.live_workers()[0].holds == {}
    assert ("cancel", f"checkpoint.{checkpoint.pk}") in me
