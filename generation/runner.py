"""Worker-side execution of a job: claim it, generate with the resident engine while saving progress and
watching for a cancel, and store the result. Called by the run_job task; the user's actions live in services."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from generation import prompts, streams
from generation.models import Job
from llmsite import redis_client
from modelzoo import pool
from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)

#: How often a running job writes its partial output and checks whether it was cancelled or deleted.
PROGRESS_INTERVAL_S = 1.0


def job_checkpoint_to_run(*, job_id: int, redelivered: bool) -> Checkpoint | None:
    """The checkpoint of a job this delivery may run (queued, or running and redelivered); None otherwise."""
    job = Job.objects.select_related("checkpoint").filter(pk=job_id).first()
    if job is None:
        return None
    if job.status == Job.Status.QUEUED or (redelivered and job.status == Job.Status.RUNNING):
        return job.checkpoint
    return None


def job_claim(*, job_id: int, redelivered: bool = False) -> Job | None:
    """Take the job for this delivery with a conditional UPDATE; None when there is nothing to do.

    - queued -> running (attempts + 1): the normal case.
    - running and `redelivered` (the broker gave the message again because its worker died without acking):
      re-claimed with attempts + 1 while attempts < JOB_MAX_ATTEMPTS, else failed "worker lost N times".
    - anything else (a duplicate delivery while the first one runs, a finished, cancelled or deleted job): None.
    """
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, attempts=F("attempts") + 1, started_at=now
    )
    if not claimed and redelivered:
        claimed = Job.objects.filter(
            pk=job_id, status=Job.Status.RUNNING, attempts__lt=settings.JOB_MAX_ATTEMPTS
        ).update(attempts=F("attempts") + 1, started_at=now, first_token_at=None, output="")
        if not claimed:
            _job_fail_lost(job_id=job_id)
    if not claimed:
        return None
    return Job.objects.select_related("checkpoint").get(pk=job_id)


def _job_fail_lost(*, job_id: int) -> None:
    job = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).first()
    if job is None or job.attempts < settings.JOB_MAX_ATTEMPTS:
        return
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, attempts=job.attempts).update(
        status=Job.Status.FAILED,
        error=f"worker lost {job.attempts} times; giving up",
        finished_at=timezone.now(),
    )
    logger.error("Job %s failed: worker lost %s times", job_id, job.attempts)


@dataclass
class _Progress:
    """What the engine reports while it runs (called from its threads): text so far, first-token time, cancel flag."""

    job_id: int
    pieces: list[str] = field(default_factory=list)
    first_token_at: datetime | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_token(self, piece: str) -> None:
        with self.lock:
            if self.first_token_at is None:
                self.first_token_at = timezone.now()
            self.pieces.append(piece)
        streams.stream_append(job_id=self.job_id, text=piece)

    def snapshot(self) -> tuple[str, int, datetime | None]:
        with self.lock:
            return "".join(self.pieces), len(self.pieces), self.first_token_at


def _job_progress_save(*, job: Job, progress: _Progress) -> bool:
    """Write the partial output; False when the job is no longer ours (cancelled, deleted, re-claimed)."""
    text, count, first_token_at = progress.snapshot()
    fields: dict[str, Any] = {"output": text, "completion_tokens": count}
    if first_token_at is not None:
        fields["first_token_at"] = first_token_at
    return bool(
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(**fields)
    )


def _generate_watched(
    *, job: Job, engine: Any, prompt_ids: list[int], params: Any, deadline: float
) -> tuple[Any, datetime | None]:
    """Run Engine.generate in a helper thread while this thread saves progress and watches for cancellation.

    The thread listens on the job's cancel channel (job_cancel publishes there), so a Stop reaches the
    engine's should_cancel at once, i.e. before its next decode step; the partial output is saved every
    PROGRESS_INTERVAL_S, which also catches a cancel or delete whose message was missed.
    All database access stays in the calling (task) thread; the engine's callbacks only touch memory and Redis.
    Returns the GenerationResult and the wall-clock time the first token arrived (None if none did).
    """
    progress = _Progress(job_id=job.pk)
    box: dict[str, Any] = {}
    pubsub = redis_client.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(streams.cancel_channel(job.pk))

    def target() -> None:
        try:
            box["result"] = engine.generate(
                prompt_ids,
                params,
                on_token=progress.on_token,
                should_cancel=progress.cancel.is_set,
                deadline=deadline,
            )
        except BaseException as exc:  # re-raised in the task thread below
            box["error"] = exc
        finally:
            streams.cancel_publish(job_id=job.pk)  # wakes the listening loop below ("done")

    try:
        # A cancel that came between the claim and the subscription: the row already says so.
        if not Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).exists():
            progress.cancel.set()
        thread = threading.Thread(target=target, name=f"job-{job.pk}", daemon=True)
        thread.start()
        next_save = time.monotonic() + PROGRESS_INTERVAL_S
        while thread.is_alive():
            try:
                message = pubsub.get_message(timeout=max(0.0, next_save - time.monotonic()))
            except Exception:  # Redis trouble: fall back to the once-a-second database check
                time.sleep(max(0.0, min(0.2, next_save - time.monotonic())))
                message = None
            if message is not None and thread.is_alive():
                progress.cancel.set()
            if time.monotonic() >= next_save:
                next_save = time.monotonic() + PROGRESS_INTERVAL_S
                if not progress.cancel.is_set() and not _job_progress_save(job=job, progress=progress):
                    progress.cancel.set()
        thread.join()
    finally:
        try:
            pubsub.close()
        except Exception:
            pass
    if "error" in box:
        raise box["error"]
    return box["result"], progress.snapshot()[2]


def job_run(*, job_id: int, redelivered: bool = False) -> Job | None:
    """Claim the job, generate with the resident engine, and store output, token counts and timings.

    Any error fails the job with the reason. The time limit (JOB_TIME_LIMIT_S, counted from the claim) is
    passed to the engine as a deadline: Celery's own time limits do nothing in the threads pool.
    Returns the finished job, or None when this delivery had nothing to do.
    """
    job = job_claim(job_id=job_id, redelivered=redelivered)
    if job is None:
        logger.info("Job %s: nothing to do for this delivery", job_id)
        return None
    deadline = time.monotonic() + settings.JOB_TIME_LIMIT_S
    only_ours = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts)
    streams.stream_start(job_id=job.pk, attempt=job.attempts)
    try:
        info = pool.checkpoint_info(job.checkpoint)
        prompt_ids = prompts.prompt_token_ids(
            info=info, task=job.task, prompt=job.prompt, context=job.context, options=job.options
        )
        params = job.sampling_params()
        with pool.serving(job.checkpoint) as engine:  # resident, and not evicted while this job runs
            generation_started = timezone.now()
            result, first_token_seen = _generate_watched(
                job=job, engine=engine, prompt_ids=prompt_ids, params=params, deadline=deadline
            )
    except Exception as exc:
        logger.exception("Job %s failed", job.pk)
        only_ours.update(status=Job.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now())
        return _job_stream_end(job_id=job.pk)

    status, error = Job.Status.SUCCEEDED, ""
    if result.finish_reason == "timeout":
        status, error = Job.Status.FAILED, f"time limit exceeded ({settings.JOB_TIME_LIMIT_S} s)"
    elif result.finish_reason == "cancelled":
        status = Job.Status.CANCELLED
    completion_tokens = len(result.token_ids)
    first_token_at = None
    if completion_tokens:
        first_token_at = first_token_seen or generation_started + timedelta(seconds=result.ttft_s)
    stats: dict[str, Any] = {
        "output": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": len(result.prompt_token_ids),
        "completion_tokens": completion_tokens,
        "batch_size": result.batch_size,
        "first_token_at": first_token_at,
        "decode_s": max(result.elapsed_s - result.ttft_s, 0.0) if completion_tokens else None,
    }
    if not only_ours.update(status=status, error=error, finished_at=timezone.now(), **stats):
        # Cancelled by the user while running: keep the text produced so far on the cancelled row.
        Job.objects.filter(pk=job.pk, status=Job.Status.CANCELLED, attempts=job.attempts).update(
            **{**stats, "finish_reason": "cancelled"}
        )
    return _job_stream_end(job_id=job.pk)


def _job_stream_end(*, job_id: int) -> Job | None:
    """After the final row is saved: close the job's token stream with its final status."""
    job = Job.objects.filter(pk=job_id).first()
    if job is not None and job.is_finished:
        streams.stream_end(job_id=job_id, status=job.status)
    return job
