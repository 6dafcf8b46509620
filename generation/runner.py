"""Worker-side execution of a job: claim it, generate with the resident engine while saving progress and
watching for a cancel, and store the result. Called by the run_job task; the user's actions live in services."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet
from django.db.utils import Error as DbError
from django.utils import timezone

from generation import prompts, selectors, streams
from generation.confidence import compact_logprob, mean_logprob
from generation.fleet import queues
from generation.models import Job
from llmsite import redis_client
from modelzoo import pool
from modelzoo.engine.text_stream import generate_text
from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)

#: How often a running job writes its partial output and checks whether it was cancelled or deleted.
PROGRESS_INTERVAL_S = 1.0


def job_checkpoint_to_run(*, job_id: int, redelivered: bool) -> Checkpoint | None:
    """The checkpoint whose queued jobs this delivery may run; None when it has nothing to do."""
    job = Job.objects.select_related("checkpoint").filter(pk=job_id).first()
    if job is None:
        return None
    if redelivered and job.status == Job.Status.RUNNING:
        return job.checkpoint
    if job.status == Job.Status.QUEUED or selectors.jobs_waiting_exist(checkpoint_id=job.checkpoint_id):
        return job.checkpoint
    return None


def job_claim(*, job_id: int, redelivered: bool = False) -> Job | None:
    """Take a job for this delivery with a conditional UPDATE; None when there is nothing to do.

    A message stands for "one job of this checkpoint": the job claimed is the next in fair order among the
    checkpoint's queued jobs (selectors.jobs_in_fair_order), which is usually, but not always, the message's
    own. A redelivered message (its worker died without acking) re-claims its own job while that job is
    running with an expired lease, attempts + 1 up to JOB_MAX_ATTEMPTS, then fails it "worker lost N times".
    Every claim starts a lease (see lease_kept) and counts an attempt.
    """
    job = Job.objects.filter(pk=job_id).only("status", "checkpoint_id", "lease_expires_at").first()
    if job is None:
        return None
    if redelivered and job.status == Job.Status.RUNNING:
        return _job_reclaim_lost(job_id=job_id)
    for candidate in selectors.jobs_in_fair_order(checkpoint_id=job.checkpoint_id, first=job_id):
        now = timezone.now()
        if Job.objects.filter(pk=candidate, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, lease_expires_at=_lease_end(now)
        ):
            return Job.objects.select_related("checkpoint").get(pk=candidate)
    return None


def _job_reclaim_lost(*, job_id: int) -> Job | None:
    now = timezone.now()
    lost = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).filter(
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True))
    if lost.filter(attempts__lt=settings.JOB_MAX_ATTEMPTS).update(
        attempts=F("attempts") + 1, started_at=now, first_token_at=None, output="", lease_expires_at=_lease_end(now)
    ):
        return Job.objects.select_related("checkpoint").get(pk=job_id)
    _job_fail_lost(jobs=lost)
    return None


def _job_fail_lost(*, jobs: QuerySet[Job]) -> int:
    """Fail those of `jobs` (running, lease expired) that used up their attempts; how many."""
    failed = 0
    for job in jobs.filter(attempts__gte=settings.JOB_MAX_ATTEMPTS):
        failed += Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(
            status=Job.Status.FAILED, error=f"worker lost {job.attempts} times; giving up",
            finished_at=timezone.now(), lease_expires_at=None,
        )
        streams.stream_end(job_id=job.pk, status=Job.Status.FAILED)
        logger.error("Job %s failed: worker lost %s times", job.pk, job.attempts)
    return failed


def _lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.JOB_LEASE_S)


@contextmanager
def lease_kept(*, job: Job) -> Iterator[None]:
    """Renew the running job's lease every third of JOB_LEASE_S from a thread of its own, for as long as the
    body runs (loading the checkpoint included), so only a worker that is gone lets it expire. Inside a
    transaction (the caller's own) another connection could not see the row, so there is nothing to renew."""
    if connection.in_atomic_block:
        yield
        return
    stop = threading.Event()

    def renew() -> None:
        try:
            while not stop.wait(settings.JOB_LEASE_S / 3):
                try:
                    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(
                        lease_expires_at=_lease_end(timezone.now()))
                except DbError as exc:
                    logger.warning("Job %s: lease not renewed (%s); retrying on a fresh connection", job.pk, exc)
                    connection.close()
        finally:
            connection.close()

    thread = threading.Thread(target=renew, name=f"lease-{job.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- the reconciler: every job ends, whatever failed ------------------------------------------------------------


def jobs_reconcile(*, publish: Callable[[Job], None]) -> dict[str, int]:
    """Make the database's truth hold again after faults; safe to run twice at once or back to back.

    - running jobs whose lease expired (their worker died, or lost Redis and the database): queued again and
      published, or failed "worker lost N times" once they used up JOB_MAX_ATTEMPTS;
    - queued jobs without a message (Redis lost its data, or a publish was lost): published again. Messages
      are interchangeable within a checkpoint (job_claim takes the next job in fair order), so it is enough
      that no fewer messages wait than jobs do.
    """
    now = timezone.now()
    expired = Job.objects.filter(status=Job.Status.RUNNING, lease_expires_at__lt=now)
    failed = _job_fail_lost(jobs=expired)
    requeued: list[Job] = []
    for job in expired.filter(attempts__lt=settings.JOB_MAX_ATTEMPTS):
        if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, lease_expires_at=job.lease_expires_at).update(
            status=Job.Status.QUEUED, output="", first_token_at=None, lease_expires_at=None
        ):
            requeued.append(job)
            logger.warning("Job %s: its worker stopped renewing the lease; queued again", job.pk)
    # A requeued job's old message is gone with its worker, or waits unacked until the visibility timeout: it
    # gets a new one. The other queued jobs get one each for the messages missing (publish raises when the
    # broker is down: the next round tries again).
    missing = Job.objects.filter(status=Job.Status.QUEUED).count() - len(requeued) - queues.messages_waiting()
    others = Job.objects.filter(status=Job.Status.QUEUED).exclude(pk__in=[job.pk for job in requeued])
    published = 0
    for job in [*requeued, *others.order_by("created_at", "id")[:max(0, missing)]]:
        publish(job)
        published += 1
    if requeued or published or failed:
        logger.warning("Reconciled: %d failed, %d queued again, %d published again", failed, len(requeued),
                       published)
    return {"failed": failed, "requeued": len(requeued), "published": published}


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

    def on_logprob(self, entry: dict) -> None:
        """A token's log-probabilities (asked for by the job), streamed as an `lp` entry before that token's text."""
        try:
            redis_client.client().xadd(streams.tokens_key(self.job_id), {"lp": json.dumps(compact_logprob(entry))})
        except Exception as exc:  # the database keeps them all
            logger.warning("Job %s: log-probabilities not streamed: %s", self.job_id, exc)

    def snapshot(self) -> tuple[str, int, datetime | None]:
        with self.lock:
            return "".join(self.pieces), len(self.pieces), self.first_token_at


def _job_progress_save(*, job: Job, progress: _Progress) -> bool:
    """Write the partial output; False when the job is no longer ours (cancelled, deleted, re-claimed). A failed
    write counts as ours: the job goes on, and its final save retries."""
    text, count, first_token_at = progress.snapshot()
    fields: dict[str, Any] = {"output": text, "completion_tokens": count}
    if first_token_at is not None:
        fields["first_token_at"] = first_token_at
    try:
        return bool(
            Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(**fields)
        )
    except DbError as exc:  # the next save tries again on a fresh connection; the final save retries
        logger.warning("Job %s: progress not saved (%s)", job.pk, exc)
        connection.close()
        return True


def _generate_watched(
    *, job: Job, engine: Any, tokenizer: Any, prompt_ids: list[int], params: Any, deadline: float
) -> tuple[Any, datetime | None]:
    """Run generate_text in a helper thread while this thread saves progress and watches for cancellation.

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
            box["result"] = generate_text(
                engine,
                tokenizer,
                prompt_ids,
                params,
                on_text=progress.on_token,
                on_logprob=progress.on_logprob if params.logprobs is not None else None,
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
    """Claim a job, generate with the resident engine, and store output, token counts and timings.

    Any error fails the job with the reason. The time limit (JOB_TIME_LIMIT_S, counted from the claim) is
    passed to the engine as a deadline: Celery's own time limits do nothing in the threads pool. The final
    write survives a database that dropped its connections (retried on a fresh one), so a result is never lost
    because one save failed. Returns the finished job, or None when this delivery had nothing to do.
    """
    job = job_claim(job_id=job_id, redelivered=redelivered)
    if job is None:
        logger.info("Job %s: nothing to do for this delivery", job_id)
        return None
    with lease_kept(job=job):
        final = _job_generate(job=job)
    only_ours = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts)

    def save() -> None:
        if not only_ours.update(**final, finished_at=timezone.now(), lease_expires_at=None) and "output" in final:
            # Cancelled by the user while running: keep the text produced so far on the cancelled row.
            Job.objects.filter(pk=job.pk, status=Job.Status.CANCELLED, attempts=job.attempts).update(
                **{**{name: value for name, value in final.items() if name not in ("status", "error")},
                   "finish_reason": "cancelled"})

    _on_fresh_connection(save, what=f"job {job.pk}: final save")
    return _on_fresh_connection(lambda: _job_stream_end(job_id=job.pk), what=f"job {job.pk}: end of stream")


def _job_generate(*, job: Job) -> dict[str, Any]:
    """Generate; the fields of the job's final row (status, error, output and statistics)."""
    deadline = time.monotonic() + settings.JOB_TIME_LIMIT_S
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
                job=job, engine=engine, tokenizer=info.tokenizer, prompt_ids=prompt_ids, params=params, deadline=deadline
            )
    except Exception as exc:
        logger.exception("Job %s failed", job.pk)
        return {"status": Job.Status.FAILED, "error": f"{type(exc).__name__}: {exc}"}

    status, error = Job.Status.SUCCEEDED, ""
    if result.finish_reason == "timeout":
        status, error = Job.Status.FAILED, f"time limit exceeded ({settings.JOB_TIME_LIMIT_S} s)"
    elif result.finish_reason == "cancelled":
        status = Job.Status.CANCELLED
    completion_tokens = len(result.token_ids)
    logprobs = None if result.logprobs is None else [compact_logprob(e) for e in result.logprobs]
    first_token_at = None
    if completion_tokens:
        first_token_at = first_token_seen or generation_started + timedelta(seconds=result.ttft_s)
    return {
        "status": status,
        "error": error,
        "output": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": len(result.prompt_token_ids),
        "completion_tokens": completion_tokens,
        "batch_size": result.batch_size,
        "first_token_at": first_token_at,
        "decode_s": max(result.elapsed_s - result.ttft_s, 0.0) if completion_tokens else None,
        "logprobs": logprobs,
        "mean_logprob": mean_logprob(logprobs),
    }


#: Pauses between tries of a write whose database connection failed (about half a minute in all).
DB_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


def _on_fresh_connection(write: Callable[[], Any], *, what: str) -> Any:
    """Run `write`; when the database connection fails, close it and try again on a new one."""
    for pause in (*DB_RETRY_PAUSES_S, None):
        try:
            return write()
        except DbError as exc:
            if pause is None:
                raise
            logger.warning("%s failed (%s); retrying on a fresh connection in %.1f s", what, exc, pause)
            connection.close()
            time.sleep(pause)
    return None


def _job_stream_end(*, job_id: int) -> Job | None:
    """After the final row is saved: close the job's token stream with its final status."""
    job = Job.objects.filter(pk=job_id).first()
    if job is not None and job.is_finished:
        streams.stream_end(job_id=job_id, status=job.status)
    return job
