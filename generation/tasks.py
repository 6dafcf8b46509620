"""Celery tasks: thin wrappers. Arguments are ids, never ORM objects.

run_job asks the fleet where a job runs, then runs it (runner) or publishes it there. The worker signals wire
this process into the fleet: at start the pool learns where demand comes from and the fleet registers the
worker (heartbeat, preload); at shutdown the fleet's threads are joined and the resident engines closed.
"""
from __future__ import annotations

import logging
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


@worker_ready.connect
def _join_the_fleet(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    from generation import selectors
    from generation.fleet import worker
    from modelzoo import pool

    pool.set_demand_source(selectors.checkpoint_demand)
    worker.start(name=getattr(sender, "hostname", None) or "worker", preload_default=settings.WORKER_PRELOAD_DEFAULT)


@worker_shutdown.connect
def _leave_the_fleet(sender: Any = None, **kwargs: Any) -> None:
    from generation.fleet import worker
    from modelzoo import pool

    worker.stop()
    pool.clear()
