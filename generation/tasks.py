"""Celery tasks: thin wrappers. Arguments are ids, never ORM objects.

run_job asks the fleet where a job runs, then runs it (runner) or publishes it there. The worker signals wire
this process into the fleet: at start the pool learns where demand comes from, the fleet registers the
worker (heartbeat, preload) and the reconciler loop starts; at shutdown those threads are joined and the
resident engines closed.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, name="generation.run_job", ignore_result=True)
def run_job(self, job_id: int, redelivered: bool = False, hops: int = 0) -> None:
    """Run one job here, or pass it to the worker that holds (or should load) its checkpoint.

    Safe to deliver twice: runner.job_claim lets only one delivery do the work, and a message the broker
    redelivers after its worker died (acks_late) re-claims the job up to JOB_MAX_ATTEMPTS. `redelivered`
    carries that over when a redelivered message is passed on; `hops` counts the passes."""
    from generation import runner
    from generation.fleet import worker

    redelivered = redelivered or bool((self.request.delivery_info or {}).get("redelivered"))
    checkpoint = runner.job_checkpoint_to_run(job_id=job_id, redelivered=redelivered)
    if checkpoint is not None:
        target = worker.destination(checkpoint=checkpoint, hops=hops)
        if target is not None:
            try:
                send_run_job(job_id, queue=target, redelivered=redelivered, hops=hops + 1)
                return
            except Exception as exc:
                logger.warning("Job %s: could not forward to %s (%s); running it here", job_id, target, exc)
                worker.forward_failed(checkpoint=checkpoint)
    with worker.running(checkpoint_id=checkpoint.pk if checkpoint is not None else 0):
        runner.job_run(job_id=job_id, redelivered=redelivered)


def send_run_job(job_id: int, *, queue: Any, **kwargs: Any) -> None:
    """Publish run_job on `queue` over a fresh broker connection: cheap, and always the configured broker URL.
    Publishing retries briefly (CELERY_TASK_PUBLISH_RETRY_POLICY) and then raises, so a dead Redis fails fast."""
    from llmsite.celery import app

    with app.connection_for_write() as connection:
        run_job.apply_async(args=[job_id], kwargs=kwargs or None, queue=queue, connection=connection)


@shared_task(name="generation.reconcile_jobs", ignore_result=True)
def reconcile_jobs() -> None:
    """Requeue or fail jobs whose worker is gone and publish queued jobs whose message is gone (runner.jobs_reconcile)."""
    from generation import runner
    from generation.fleet import queues

    runner.jobs_reconcile(publish=lambda job: send_run_job(
        job.pk, queue=queues.queue_for_new_job(checkpoint_id=job.checkpoint_id)))


def _reconcile_loop(stop: threading.Event) -> None:
    """Every RECONCILE_INTERVAL_S, the first live worker to take Redis's turn key runs the reconciler."""
    from django.conf import settings
    from django.db import close_old_connections

    from llmsite import redis_client

    while not stop.wait(settings.RECONCILE_INTERVAL_S):
        try:
            if redis_client.client().set(RECONCILE_TURN_KEY, "1", nx=True, ex=settings.RECONCILE_INTERVAL_S):
                reconcile_jobs()
        except Exception as exc:
            logger.warning("Reconciler did not run: %s", exc)
        finally:
            close_old_connections()


RECONCILE_TURN_KEY = "llmsite:reconcile-turn"
_reconciler_stop = threading.Event()
_reconciler: threading.Thread | None = None


@worker_ready.connect
def _join_the_fleet(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    from generation import selectors
    from generation.fleet import worker
    from modelzoo import pool

    global _reconciler
    pool.set_demand_source(selectors.checkpoint_demand)
    worker.start(name=getattr(sender, "hostname", None) or "worker", preload_default=settings.WORKER_PRELOAD_DEFAULT)
    _reconciler_stop.clear()
    _reconciler = threading.Thread(target=_reconcile_loop, args=(_reconciler_stop,), name="reconciler", daemon=True)
    _reconciler.start()


@worker_shutdown.connect
def _leave_the_fleet(sender: Any = None, **kwargs: Any) -> None:
    from generation.fleet import worker
    from modelzoo import pool

    _reconciler_stop.set()
    if _reconciler is not None:
        _reconciler.join(timeout=60)
    worker.stop()
    pool.clear()
