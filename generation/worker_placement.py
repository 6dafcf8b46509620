"""Worker side of the routing: run a job here, pass it on, or claim its checkpoint and load it.

Runs only inside a Celery worker process (start() is called when the worker is ready). It keeps the worker's
entry in the registry true: the checkpoints it holds are the resident ones plus those claimed for a load in
progress, and it consumes `checkpoint.<id>` for exactly those. When it stops holding one (evicted, or a
claimed load that did not happen) it stops consuming that queue and moves what is left in it to the default
queue, unless another live worker holds the checkpoint too. The heartbeat also sweeps queues nobody
consumes, so a message routed to a worker that died or evicted meanwhile still runs.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from django.conf import settings

from generation import broker_queues, routing, worker_registry
from generation.routing import Action, WorkerState

logger = logging.getLogger(__name__)


class _Worker:
    """This process's view of itself: what it claimed, what it consumes, counters for the status."""

    def __init__(self) -> None:
        self.name = ""
        # Guards the fields below and orders this process's writes of its holds (reentrant: status() and
        # _holds() take it too).
        self.lock = threading.RLock()
        self.claims: dict[int, int] = {}  # checkpoint id -> bytes, claimed for a load not finished yet
        self.running: Counter[int] = Counter()  # checkpoint id -> jobs of it running here
        self.loads = 0
        self.evictions = 0


_me = _Worker()


def start(*, name: str) -> None:
    """Called once the worker is ready: a fresh registry entry, and the pool's loads and evictions followed."""
    from modelzoo import pool

    _me.name = name
    pool.add_listener(_on_pool_event)
    worker_registry.forget(name=name)  # a restarted worker holds nothing yet, whatever it said before
    heartbeat_once()


def stop() -> None:
    if _me.name:
        worker_registry.forget(name=_me.name)


# --- the job's way ---------------------------------------------------------------------------------------------


def run_or_forward(*, job_id: int, redelivered: bool = False, hops: int = 0) -> None:
    """Run the job here, or publish it again where its checkpoint is (or is best loaded)."""
    from generation.models import Job
    from generation.services import job_run

    job = Job.objects.select_related("checkpoint").filter(pk=job_id).first()
    waiting = job is not None and (job.status == Job.Status.QUEUED or (redelivered and job.status == Job.Status.RUNNING))
    if waiting and _me.name:
        decision = _decide(job=job, hops=hops)
        if decision.action is Action.FORWARD:
            if _forward(job_id=job_id, queue=decision.queue, redelivered=redelivered, hops=hops + 1):
                return
            _claim(job.checkpoint)  # the broker refused the message: run it here rather than lose it
    checkpoint_id = job.checkpoint_id if job is not None else 0
    with _me.lock:
        _me.running[checkpoint_id] += 1
    try:
        job_run(job_id=job_id, redelivered=redelivered)
    finally:
        with _me.lock:
            _me.running[checkpoint_id] -= 1
        _release_unloaded_claim(checkpoint_id)


def _decide(*, job: Any, hops: int) -> routing.Decision:
    """Under the placement lock: where the job's checkpoint is or should be; claims it when it is here."""
    from modelzoo import pool

    checkpoint = job.checkpoint
    try:
        need = pool.estimated_bytes(checkpoint)
    except Exception:  # unreadable metadata: let job_run fail the job with the reason
        return routing.Decision(Action.RUN)
    try:
        with worker_registry.placement_lock():
            others = worker_registry.live_workers()
            decision = routing.place(checkpoint_id=checkpoint.pk, need_bytes=need, me=_my_state(), others=others,
                                     hops=hops)
            if decision.action is Action.LOAD:
                _hold_claimed(checkpoint.pk, size_bytes=need)
        if decision.action is Action.LOAD:
            _subscribe(checkpoint.pk)
    except Exception as exc:  # Redis trouble: run here, as a worker without routing would
        logger.warning("Job %s: placement skipped (%s); running it here", job.pk, exc)
        return routing.Decision(Action.RUN)
    if decision.action is Action.FORWARD:
        logger.info("Job %s: checkpoint %s is held elsewhere or cheaper to load elsewhere; forwarded to %s",
                    job.pk, checkpoint.pk, decision.queue)
    elif decision.action is Action.LOAD:
        logger.info("Job %s: claimed checkpoint %s for loading here", job.pk, checkpoint.pk)
    return decision


def _forward(*, job_id: int, queue: str, redelivered: bool, hops: int) -> bool:
    from celery.utils.nodenames import worker_direct

    from generation.tasks import send_run_job

    target: Any = queue
    if queue.endswith(routing.WORKER_QUEUE_SUFFIX):  # through Celery's exchange for direct queues
        target = worker_direct(queue[: -len(routing.WORKER_QUEUE_SUFFIX)])
    try:
        send_run_job(job_id, queue=target, redelivered=redelivered, hops=hops)
    except Exception as exc:
        logger.warning("Job %s: could not forward to %s (%s); running it here", job_id, queue, exc)
        return False
    return True


def _my_state() -> WorkerState:
    return WorkerState(name=_me.name, holds=_holds(), budget_bytes=_budget(), running_jobs=_running_jobs())


def _running_jobs() -> int:
    with _me.lock:
        return sum(_me.running.values())


def _holds() -> dict[int, int]:
    from modelzoo import pool

    with _me.lock:
        claims = dict(_me.claims)
    return {**claims, **pool.resident_sizes()}


def _budget() -> int:
    from modelzoo import pool

    return pool.memory_budget_bytes()


# --- claims and queue subscriptions ------------------------------------------------------------------------------


def _claim(checkpoint: Any) -> None:
    """Hold `checkpoint` before it is loaded, so its jobs come here and no other worker loads it too."""
    from modelzoo import pool

    try:
        _hold_claimed(checkpoint.pk, size_bytes=pool.estimated_bytes(checkpoint))
        _subscribe(checkpoint.pk)
    except Exception as exc:
        logger.warning("Checkpoint %s: claim not registered (%s)", checkpoint.pk, exc)


def _hold_claimed(checkpoint_id: int, *, size_bytes: int) -> None:
    with _me.lock:
        _me.claims[checkpoint_id] = size_bytes
        worker_registry.hold(name=_me.name, checkpoint_id=checkpoint_id, size_bytes=size_bytes)


def _release_unloaded_claim(checkpoint_id: int) -> None:
    """After a job ran (or did not: cancelled, or its load failed): a claim that did not become a resident
    checkpoint is dropped, unless another job of it is still running here (on its way to loading it)."""
    from modelzoo import pool

    if checkpoint_id in pool.resident_sizes():
        return
    with _me.lock:
        if checkpoint_id not in _me.claims or _me.running[checkpoint_id] > 0:
            return
        del _me.claims[checkpoint_id]
    try:
        _stop_holding(checkpoint_id)
    except Exception as exc:
        logger.warning("Checkpoint %s: claim not released (%s); the heartbeat will", checkpoint_id, exc)


def _on_pool_event(event: str, checkpoint_id: int) -> None:
    if event == "loaded":
        with _me.lock:
            _me.loads += 1
            _me.claims.pop(checkpoint_id, None)
        _publish()
        _subscribe(checkpoint_id)
    elif event == "evicted":
        with _me.lock:
            _me.evictions += 1
            _me.claims.pop(checkpoint_id, None)
        _stop_holding(checkpoint_id)


def _stop_holding(checkpoint_id: int) -> None:
    """Out of the registry, off the checkpoint's queue, and what waits there back to the default queue
    (unless another live worker holds the checkpoint and will take it)."""
    from llmsite.celery import app

    queue = routing.checkpoint_queue(checkpoint_id)
    _publish()
    app.control.cancel_consumer(queue, destination=[_me.name])
    others = [worker for worker in worker_registry.live_workers() if worker.name != _me.name]
    if not any(checkpoint_id in worker.holds for worker in others):
        moved = broker_queues.move_all(source=queue, target=broker_queues.default_queue())
        if moved:
            logger.info("Moved %d message(s) of %s back to %s", moved, queue, broker_queues.default_queue())


def _subscribe(checkpoint_id: int) -> None:
    """Consume the checkpoint's queue (idempotent: a worker already consuming it does nothing). Sent as a
    control message to this worker itself, because only the consumer's own thread may change its queues."""
    from llmsite.celery import app

    app.control.add_consumer(routing.checkpoint_queue(checkpoint_id), destination=[_me.name])


# --- heartbeat ------------------------------------------------------------------------------------------------


def status() -> dict[str, Any]:
    """What this worker publishes about itself (see worker_registry.live_statuses)."""
    from modelzoo import pool

    with _me.lock:
        claimed = sorted(_me.claims)
        running, loads, evictions = _running_jobs(), _me.loads, _me.evictions
    resident = pool.loaded_checkpoint_ids()
    return {
        "resident": resident,
        "loading": [pk for pk in claimed if pk not in resident],
        "memory_used_bytes": pool.resident_bytes(),
        "memory_budget_bytes": _budget(),
        "running_jobs": running,
        "loads": loads,
        "evictions": evictions,
        "heartbeat_at": time.time(),
    }


def heartbeat_once() -> None:
    """Publish this worker's holds and status, keep consuming the queues of what it holds (a control message
    may be lost), and sweep queues no live worker consumes."""
    holds = _publish()
    for checkpoint_id in holds:
        _subscribe(checkpoint_id)
    broker_queues.sweep_stranded(live=worker_registry.live_workers())


def _publish() -> dict[int, int]:
    """Write this worker's holds and status to the registry now; returns the holds."""
    with _me.lock:
        holds = _holds()
        worker_registry.publish(name=_me.name, holds=holds, status=status())
    return holds


def heartbeat_interval_s() -> float:
    return settings.WORKER_HEARTBEAT_TTL_S / 3
