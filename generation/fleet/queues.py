"""The Celery queues as Redis lists: which queue a new job is published to, their depths, and moving messages
out of queues nobody consumes.

Kombu's Redis transport keeps a queue as a list named after it (LPUSH to publish, BRPOP to consume, so the
oldest message is at the right end). Messages are moved whole, with their delivery info untouched: a moved
message whose worker dies is restored to its old queue and swept again.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings

from generation.fleet import registry
from generation.fleet.placement import (
    CHECKPOINT_QUEUE_PREFIX,
    WORKER_QUEUE_SUFFIX,
    WorkerState,
    checkpoint_id_of_queue,
    queue_for,
)
from llmsite import redis_client

logger = logging.getLogger(__name__)

# Newest first from the left of the source onto the right of the target: the oldest moved message ends up
# rightmost, i.e. next in line, ahead of what was already waiting in the target (it waited longer).
_MOVE_ALL = """
local moved = 0
while true do
  local message = redis.call('LPOP', KEYS[1])
  if not message then return moved end
  redis.call('RPUSH', KEYS[2], message)
  moved = moved + 1
end
"""


UNACKED_KEY = "unacked"  # kombu's Redis transport: delivered, not yet acknowledged messages


def default_queue() -> str:
    return settings.CELERY_TASK_DEFAULT_QUEUE


def queue_for_new_job(*, checkpoint_id: int) -> str:
    """`checkpoint.<id>` when a live worker holds the checkpoint, else the default queue (also when the
    registry cannot be read: publishing then tells whether the broker is really down)."""
    try:
        workers = registry.live_workers()
    except Exception as exc:
        logger.warning("Worker registry unreadable (%s); routing to %s", exc, default_queue())
        return default_queue()
    return queue_for(checkpoint_id=checkpoint_id, workers=workers, default_queue=default_queue())


def routed_queue_names() -> list[str]:
    """Checkpoint queues and worker direct queues that exist in Redis now (a list with messages)."""
    client = redis_client.client()
    names = set()
    for pattern in (f"{CHECKPOINT_QUEUE_PREFIX}*", f"*{WORKER_QUEUE_SUFFIX}"):
        for key in client.scan_iter(match=pattern, count=500, _type="list"):
            names.add(key.decode())
    return sorted(names)


def depths() -> dict[str, int]:
    """Messages waiting per queue: the default queue, then every checkpoint and worker queue that has some.
    Messages a worker has taken but not yet acked are not counted."""
    names = [default_queue(), *routed_queue_names()]
    pipe = redis_client.client().pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return dict(zip(names, pipe.execute()))


def messages_waiting() -> int:
    """Messages in every queue plus those taken by a worker and not yet acked (kombu's `unacked` hash)."""
    return sum(depths().values()) + int(redis_client.client().hlen(UNACKED_KEY))


def move_all(*, source: str, target: str) -> int:
    """Move every message of `source` to `target` atomically; how many were moved."""
    return int(redis_client.client().eval(_MOVE_ALL, 2, source, target))


def stranded_queues(*, queues: Iterable[str], live: Iterable[WorkerState]) -> list[str]:
    """The queues no live worker consumes: a checkpoint queue no live worker holds, a dead worker's queue."""
    live = list(live)
    held = {checkpoint_id for worker in live for checkpoint_id in worker.holds}
    names = {worker.name for worker in live}
    stranded = []
    for queue in queues:
        checkpoint_id = checkpoint_id_of_queue(queue)
        if checkpoint_id is not None and checkpoint_id not in held:
            stranded.append(queue)
        elif queue.endswith(WORKER_QUEUE_SUFFIX) and queue[: -len(WORKER_QUEUE_SUFFIX)] not in names:
            stranded.append(queue)
    return stranded


def sweep_stranded(*, live: Iterable[WorkerState]) -> int:
    """Move the messages of every stranded queue to the default queue; how many were moved."""
    moved = 0
    for queue in stranded_queues(queues=routed_queue_names(), live=live):
        count = move_all(source=queue, target=default_queue())
        if count:
            logger.info("Moved %d message(s) from %s, which no live worker consumes, to %s",
                        count, queue, default_queue())
        moved += count
    return moved
