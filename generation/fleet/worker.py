"""This worker process in the fleet: its lifecycle (registry entry, heartbeat, preload) and where each job
it takes runs: here, passed on, or here after claiming and loading its checkpoint.

Runs only inside a Celery worker process (start() when the worker is ready, stop() when it shuts down). It
keeps the worker's entry in the registry true: the checkpoints it holds are the resident ones plus those
claimed for a load in progress, and it consumes `checkpoint.<id>` for exactly those. When it stops holding one
(evicted, or a claimed load that did not happen) it stops consuming that queue and moves what is left in it to
the default queue, unless another live worker holds the checkpoint too. The heartbeat also sweeps queues
nobody consumes, so a message routed to a worker that died or evicted meanwhile still runs.

Nothing here knows jobs: the run_job task asks `destination()` where a job of a checkpoint runs, publishes it
there itself, and runs it under `running()` when it stays.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from generation.fleet import placement, queues, registry
from generation.fleet.placement import Action, WorkerState
from modelzoo import pool
from modelzoo.models import Checkpoint

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
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []


_me = _Worker()


def start(*, name: str, preload_default: bool) -> None:
    """Called once the worker is ready: a fresh registry entry, the pool's loads and evictions followed, the
    heartbeat thread, and (optionally) the default checkpoint loaded in the background."""
    _me.name = name
    _me.stopping.clear()
    pool.add_listener(_on_pool_event)
    try:
        registry.forget(name=name)  # a restarted worker holds nothing yet, whatever it said before
        heartbeat_once()
    except Exception as exc:
        logger.warning("Worker not registered yet (%s); the heartbeat will", exc)
    _start_thread(_heartbeat_loop, "heartbeat")
    if preload_default:
        _start_thread(_preload_default, "preload-default")


def stop() -> None:
    """Stop and join this module's threads, and leave the registry."""
    _me.stopping.set()
    for thread in _me.threads:
        thread.join(timeout=60)
    _me.threads.clear()
    if _me.name:
        try:
            registry.forget(name=_me.name)
        except Exception:
            logger.warning("Could not unregister this worker's heartbeat")


def _start_thread(target: Any, name: str) -> None:
    thread = threading.Thread(target=target, name=name, daemon=True)
    _me.threads.append(thread)
    thread.start()


def _heartbeat_loop() -> None:
    """Tell the web side this worker is alive and what it holds (the /v1 API answers 503 when no worker is
    alive; jobs are routed by what workers hold), and sweep stranded queues, until stop()."""
    while not _me.stopping.is_set():
        try:
            heartbeat_once()
        except Exception as exc:
            logger.warning("Heartbeat not sent: %s", exc)
        finally:
            close_old_connections()
        _me.stopping.wait(heartbeat_interval_s())


def _preload_default() -> None:
    """Load the default checkpoint into this process's pool (the first job then finds it resident)."""
    try:
        checkpoint = Checkpoint.default()
        if checkpoint is not None:
            pool.engine_for(checkpoint)
            logger.info("Checkpoint %s is resident", checkpoint.name)
    except Exception:
        logger.exception("Preloading the default checkpoint failed; jobs will load it on demand")
    finally:
        close_old_connections()


# --- the job's way ---------------------------------------------------------------------------------------------


def destination(*, checkpoint: Checkpoint, hops: int) -> Any | None:
    """Where a job of `checkpoint` that this worker took should run: None for here (claiming the checkpoint
    when this worker is to load it), else the queue to publish it on (a Celery target)."""
    if not _me.name:  # not a registered worker (a test calling the task directly): run here
        return None
    decision = _decide(checkpoint=checkpoint, hops=hops)
    if decision.action is not Action.FORWARD:
        return None
    if decision.queue.endswith(placement.WORKER_QUEUE_SUFFIX):  # through Celery's exchange for direct queues
        from celery.utils.nodenames import worker_direct

        return worker_direct(decision.queue[: -len(placement.WORKER_QUEUE_SUFFIX)])
    return decision.queue


def forward_failed(*, checkpoint: Checkpoint) -> None:
    """The broker refused to pass a job on: it runs here instead, so hold its checkpoint."""
    _claim(checkpoint)


@contextmanager
def running(*, checkpoint_id: int) -> Iterator[None]:
    """Count a job of `checkpoint_id` as running here (the status and placement see it); afterwards drop a
    claim that did not become a resident checkpoint."""
    with _me.lock:
        _me.running[checkpoint_id] += 1
    try:
        yield
    finally:
        with _me.lock:
            _me.running[checkpoint_id] -= 1
        _release_unloaded_claim(checkpoint_id)


def _decide(*, checkpoint: Checkpoint, hops: int) -> placement.Decision:
    """Under the placement lock: where the checkpoint is or should be; claims it when it is here."""
    try:
        need = pool.estimated_bytes(checkpoint)
    except Exception:  # unreadable metadata: let the run fail the job with the reason
        return placement.Decision(Action.RUN)
    try:
        with registry.placement_lock():
            others = registry.live_workers()
            decision = placement.place(checkpoint_id=checkpoint.pk, need_bytes=need, me=_my_state(),
                                       others=others, hops=hops)
            if decision.action is Action.LOAD:
                _hold_claimed(checkpoint.pk, size_bytes=need)
        if decision.action is Action.LOAD:
            _subscribe(checkpoint.pk)
    except Exception as exc:  # Redis trouble: run here, as a worker without routing would
        logger.warning("Checkpoint %s: placement skipped (%s); running the job here", checkpoint.pk, exc)
        return placement.Decision(Action.RUN)
    if decision.action is Action.FORWARD:
        logger.info("Checkpoint %s is held elsewhere or cheaper to load elsewhere; job forwarded to %s",
                    checkpoint.pk, decision.queue)
    elif decision.action is Action.LOAD:
        logger.info("Claimed checkpoint %s for loading here", checkpoint.pk)
    return decision


def _my_state() -> WorkerState:
    return WorkerState(name=_me.name, holds=_holds(), budget_bytes=_budget(), running_jobs=_running_jobs())


def _running_jobs() -> int:
    with _me.lock:
        return sum(_me.running.values())


def _holds() -> dict[int, int]:
    with _me.lock:
        claims = dict(_me.claims)
    return {**claims, **pool.resident_sizes()}


def _budget() -> int:
    return pool.memory_budget_bytes()


# --- claims and queue subscriptions ------------------------------------------------------------------------------


def _claim(checkpoint: Any) -> None:
    """Hold `checkpoint` before it is loaded, so its jobs come here and no other worker loads it too."""
    try:
        _hold_claimed(checkpoint.pk, size_bytes=pool.estimated_bytes(checkpoint))
        _subscribe(checkpoint.pk)
    except Exception as exc:
        logger.warning("Checkpoint %s: claim not registered (%s)", checkpoint.pk, exc)


def _hold_claimed(checkpoint_id: int, *, size_bytes: int) -> None:
    with _me.lock:
        _me.claims[checkpoint_id] = size_bytes
        registry.hold(name=_me.name, checkpoint_id=checkpoint_id, size_bytes=size_bytes)


def _release_unloaded_claim(checkpoint_id: int) -> None:
    """After a job ran (or did not: cancelled, or its load failed): a claim that did not become a resident
    checkpoint is dropped, unless another job of it is still running here (on its way to loading it)."""
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

    queue = placement.checkpoint_queue(checkpoint_id)
    _publish()
    app.control.cancel_consumer(queue, destination=[_me.name])
    others = [worker for worker in registry.live_workers() if worker.name != _me.name]
    if not any(checkpoint_id in worker.holds for worker in others):
        moved = queues.move_all(source=queue, target=queues.default_queue())
        if moved:
            logger.info("Moved %d message(s) of %s back to %s", moved, queue, queues.default_queue())


def _subscribe(checkpoint_id: int) -> None:
    """Consume the checkpoint's queue (idempotent: a worker already consuming it does nothing). Sent as a
    control message to this worker itself, because only the consumer's own thread may change its queues."""
    from llmsite.celery import app

    app.control.add_consumer(placement.checkpoint_queue(checkpoint_id), destination=[_me.name])


# --- heartbeat ------------------------------------------------------------------------------------------------


def status() -> dict[str, Any]:
    """What this worker publishes about itself (see registry.live_statuses)."""
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
    queues.sweep_stranded(live=registry.live_workers())


def _publish() -> dict[int, int]:
    """Write this worker's holds and status to the registry now; returns the holds."""
    with _me.lock:
        holds = _holds()
        registry.publish(name=_me.name, holds=holds, status=status())
    return holds


def heartbeat_interval_s() -> float:
    return settings.WORKER_HEARTBEAT_TTL_S / 3
