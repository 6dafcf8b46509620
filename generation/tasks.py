"""Celery tasks: thin wrappers over services. Arguments are ids, never ORM objects.

Also the worker-side wiring of the model pool: the default checkpoint is preloaded in the background when a
worker starts (WORKER_PRELOAD_DEFAULT), a heartbeat thread keeps the worker's entry in the registry (what it
holds, memory, running jobs; see generation.worker_placement), and resident engines are closed when it shuts
down.
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

    Safe to deliver twice: services.job_claim lets only one delivery do the work, and a message the broker
    redelivers after its worker died (acks_late) re-claims the job up to JOB_MAX_ATTEMPTS. `redelivered`
    carries that over when a redelivered message is passed on; `hops` counts the passes."""
    from generation.worker_placement import run_or_forward

    delivery_info = self.request.delivery_info or {}
    run_or_forward(job_id=job_id, redelivered=redelivered or bool(delivery_info.get("redelivered")), hops=hops)


def send_run_job(job_id: int, *, queue: Any, **kwargs: Any) -> None:
    """Publish run_job on `queue` over a fresh broker connection: cheap, and always the configured broker URL.
    Publishing retries briefly (CELERY_TASK_PUBLISH_RETRY_POLICY) and then raises, so a dead Redis fails fast."""
    from llmsite.celery import app

    with app.connection_for_write() as connection:
        run_job.apply_async(args=[job_id], kwargs=kwargs or None, queue=queue, connection=connection)


def preload_default_checkpoint() -> None:
    """Load the default checkpoint into this process's pool (the first job then finds it resident)."""
    from django.db import close_old_connections

    from modelzoo import pool
    from modelzoo.models import Checkpoint

    try:
        checkpoint = Checkpoint.default()
        if checkpoint is not None:
            pool.engine_for(checkpoint)
            logger.info("Checkpoint %s is resident", checkpoint.name)
    except Exception:
        logger.exception("Preloading the default checkpoint failed; jobs will load it on demand")
    finally:
        close_old_connections()


_heartbeat_stop = threading.Event()


def heartbeat() -> None:
    """Tell the web side this worker is alive and what it holds (the /v1 API answers 503 when no worker is
    alive; jobs are routed by what workers hold), and sweep stranded queues, until shutdown."""
    from django.db import close_old_connections

    from generation import worker_placement

    while not _heartbeat_stop.is_set():
        try:
            worker_placement.heartbeat_once()
        except Exception as exc:
            logger.warning("Heartbeat not sent: %s", exc)
        finally:
            close_old_connections()
        _heartbeat_stop.wait(worker_placement.heartbeat_interval_s())


@worker_ready.connect
def _preload_on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    from generation import worker_placement

    try:
        worker_placement.start(name=getattr(sender, "hostname", None) or "worker")
    except Exception as exc:
        logger.warning("Worker not registered yet (%s); the heartbeat will", exc)
    threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
    if settings.WORKER_PRELOAD_DEFAULT:
        threading.Thread(target=preload_default_checkpoint, name="preload-default", daemon=True).start()


@worker_shutdown.connect
def _close_engines_on_shutdown(sender: Any = None, **kwargs: Any) -> None:
    from generation import worker_placement
    from modelzoo import pool

    _heartbeat_stop.set()
    try:
        worker_placement.stop()
    except Exception:
        logger.warning("Could not unregister this worker's heartbeat")
    pool.clear()
