"""A new job is published to the queue of a live worker holding the job's checkpoint, else to the
default queue (real Redis)."""
from __future__ import annotations

import pytest

from generation import services
from generation.fleet import registry
from llmsite import redis_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_redis")]



def create(owner, checkpoint):
    return services.job_create(owner=owner, task="qa", prompt="Why?", checkpoint=checkpoint)


def test_it_publishes_to_the_checkpoint_queue_of_a_live_holder(owner, checkpoint):
    registry.publish(name="w1@host", holds={checkpoint.pk: 1}, status={})
    create(owner, checkpoint)
    assert redis_client.client().llen(f"checkpoint.{checkpoint.pk}") == 1
    assert redis_client.client().llen("celery") == 0


def test_it_publishes_to_the_default_queue_when_the_holder_is_not_alive(owner, checkpoint):
    registry.publish(name="w1@host", holds={checkpoint.pk: 1}, status={})
    redis_client.client().zadd(registry.WORKERS_KEY, {"w1@host": 1.0})  # last heartbeat long ago
    create(owner, checkpoint)
    assert redis_client.client().llen("celery") == 1
    assert redis_client.client().llen(f"checkpoint.{checkpoint.pk}") == 0


def test_it_publishes_to_the_default_queue_when_a_live_worker_holds_other_checkpoints(owner, checkpoint):
    registry.publish(name="w1@host", holds={checkpoint.pk + 1: 1}, status={})
    create(owner, checkpoint)
    assert redis_client.client().llen("celery") == 1


def test_it_drops_a_stopped_worker_from_the_registry():
    registry.publish(name="w1@host", holds={3: 1}, status={"running_jobs": 1})
    assert [w.name for w in registry.live_workers()] == ["w1@host"]
    registry.forget(name="w1@host")
    assert registry.live_workers() == []
