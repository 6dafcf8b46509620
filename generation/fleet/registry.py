"""The live workers in Redis: who is alive, which checkpoints each holds, and what each reports about itself.

Keys:
- `llmsite:workers`                 zset, worker name -> last heartbeat (unix time); alive = within WORKER_HEARTBEAT_TTL_S
- `llmsite:worker:<name>:holds`     hash, checkpoint id -> estimated bytes: resident, or claimed for a load
- `llmsite:worker:<name>:status`    JSON the worker publishes with each heartbeat (memory, running jobs, loads...)

The routing reads holds; /healthz and the admin read the status. Both expire when a worker stops sending
heartbeats, and a dead worker's entries are ignored before that (it is not in the live part of the zset).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from django.conf import settings

from generation.fleet.placement import WorkerState
from llmsite import redis_client

WORKERS_KEY = "llmsite:workers"  # zset: worker name -> last heartbeat (unix time)
PLACEMENT_LOCK_KEY = "llmsite:placement-lock"


def holds_key(name: str) -> str:
    return f"llmsite:worker:{name}:holds"


def status_key(name: str) -> str:
    return f"llmsite:worker:{name}:status"


def _expiry_s() -> int:
    return settings.WORKER_HEARTBEAT_TTL_S * 4


def live_names() -> list[str]:
    since = time.time() - settings.WORKER_HEARTBEAT_TTL_S
    return sorted(name.decode() for name in redis_client.client().zrangebyscore(WORKERS_KEY, since, "+inf"))


def live_count() -> int:
    """Workers that sent a heartbeat within WORKER_HEARTBEAT_TTL_S; 0 when Redis cannot be read."""
    try:
        return int(redis_client.client().zcount(WORKERS_KEY, time.time() - settings.WORKER_HEARTBEAT_TTL_S, "+inf"))
    except redis.RedisError:
        return 0


def live_workers() -> list[WorkerState]:
    """Every live worker with the checkpoints it holds, its budget and its running jobs."""
    return [_state(name, holds, status) for name, holds, status in _read_all()]


def live_statuses() -> list[dict[str, Any]]:
    """What every live worker last published about itself (see fleet.worker.status), oldest name first."""
    return [{**status, "name": name, "holds": sorted(holds)} for name, holds, status in _read_all()]


def _read_all() -> list[tuple[str, dict[int, int], dict[str, Any]]]:
    names = live_names()
    pipe = redis_client.client().pipeline(transaction=False)
    for name in names:
        pipe.hgetall(holds_key(name))
        pipe.get(status_key(name))
    replies = pipe.execute()
    result = []
    for index, name in enumerate(names):
        holds_raw, status_raw = replies[2 * index], replies[2 * index + 1]
        holds = {int(key): int(value) for key, value in holds_raw.items()}
        result.append((name, holds, json.loads(status_raw) if status_raw else {}))
    return result


def _state(name: str, holds: dict[int, int], status: dict[str, Any]) -> WorkerState:
    return WorkerState(name=name, holds=holds, budget_bytes=int(status.get("memory_budget_bytes") or 0),
                       running_jobs=int(status.get("running_jobs") or 0))


def publish(*, name: str, holds: dict[int, int], status: dict[str, Any]) -> None:
    """One heartbeat: alive now, holding exactly `holds`, with `status` for the readers."""
    pipe = redis_client.client().pipeline()
    pipe.zadd(WORKERS_KEY, {name: time.time()})
    pipe.delete(holds_key(name))
    if holds:
        pipe.hset(holds_key(name), mapping={str(key): value for key, value in holds.items()})
        pipe.expire(holds_key(name), _expiry_s())
    pipe.set(status_key(name), json.dumps(status), ex=_expiry_s())
    pipe.execute()


def hold(*, name: str, checkpoint_id: int, size_bytes: int) -> None:
    redis_client.client().hset(holds_key(name), str(checkpoint_id), size_bytes)


def forget(*, name: str) -> None:
    """The worker stopped (or starts afresh under the same name): drop everything it said."""
    pipe = redis_client.client().pipeline()
    pipe.zrem(WORKERS_KEY, name)
    pipe.delete(holds_key(name), status_key(name))
    pipe.execute()


@contextmanager
def placement_lock() -> Iterator[bool]:
    """Serializes load decisions across workers, so two never claim one checkpoint at once. Yields False
    when the lock could not be had in time (the caller then decides alone rather than not at all)."""
    lock = redis_client.client().lock(PLACEMENT_LOCK_KEY, timeout=10, blocking_timeout=5)
    acquired = lock.acquire()
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except Exception:  # expired meanwhile: another worker may hold it now
                pass
