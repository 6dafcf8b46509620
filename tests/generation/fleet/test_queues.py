"""generation.fleet.queues against the test run's real Redis: depths, moves, and the sweep of queues no
live worker consumes."""
from __future__ import annotations

import pytest

from generation.fleet import queues
from generation.fleet.placement import WorkerState
from llmsite import redis_client

pytestmark = pytest.mark.usefixtures("empty_redis")



def publish(queue: str, *messages: str) -> None:
    for message in messages:  # as kombu does: LPUSH, consumers BRPOP the oldest from the right
        redis_client.client().lpush(queue, message)


def consume_order(queue: str) -> list[str]:
    return [message.decode() for message in reversed(redis_client.client().lrange(queue, 0, -1))]


def test_it_moves_messages_oldest_first_ahead_of_those_already_waiting():
    publish("celery", "d1")
    publish("checkpoint.7", "c1", "c2", "c3")
    assert queues.move_all(source="checkpoint.7", target="celery") == 3
    assert consume_order("celery") == ["c1", "c2", "c3", "d1"]
    assert not redis_client.client().exists("checkpoint.7")


def test_it_reports_the_depth_of_the_default_and_every_routed_queue():
    publish("checkpoint.7", "c1", "c2")
    publish("w1@host.dq2", "x")
    assert queues.depths() == {"celery": 0, "checkpoint.7": 2, "w1@host.dq2": 1}


def test_it_names_the_queues_no_live_worker_consumes():
    live = [WorkerState(name="w1@host", holds={7: 1})]
    names = ["checkpoint.7", "checkpoint.8", "w1@host.dq2", "w2@host.dq2", "celery"]
    assert queues.stranded_queues(queues=names, live=live) == ["checkpoint.8", "w2@host.dq2"]


def test_it_sweeps_stranded_messages_to_the_default_queue_and_leaves_held_ones():
    publish("checkpoint.7", "held")
    publish("checkpoint.8", "orphan1", "orphan2")
    publish("dead@host.dq2", "orphan3")
    moved = queues.sweep_stranded(live=[WorkerState(name="w1@host", holds={7: 1})])
    assert moved == 3
    assert sorted(consume_order("celery")) == ["orphan1", "orphan2", "orphan3"]
    assert consume_order("checkpoint.7") == ["held"]
