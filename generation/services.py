"""What a user or admin can do: create, cancel, delete and replay jobs, manage API keys. Views, the API, the
admin and tests call these; the worker side of a job lives in runner."""
from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from generation import limits, prompts, streams
from generation.fleet import queues
from generation.models import ApiKey, Job
from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)


# --- create --------------------------------------------------------------------------------------------------


def job_create(
    *,
    owner: Any,
    task: str,
    prompt: str,
    checkpoint: Checkpoint,
    context: str = "",
    options: dict | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_tokens: int = 256,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    prompt_tokens: int | None = None,
    source: str = Job.Source.WEB,
) -> Job:
    """Create a queued job and enqueue it once the transaction commits.

    Input is trusted (JobForm validated it). When the broker cannot be reached the job is failed with the
    reason right away and the returned object says so (`status == failed`, `error`), so the caller can tell
    the user; a job is never left queued without a message behind it.
    """
    with transaction.atomic():
        job = Job.objects.create(
            owner=owner,
            task=task,
            prompt=prompt,
            context=context,
            options=options or {},
            checkpoint=checkpoint,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            seed=seed,
            repetition_penalty=repetition_penalty,
            prompt_tokens=prompt_tokens,
            source=source,
        )
        transaction.on_commit(lambda: job_enqueue(job=job))
    return job


def jobs_submit(*, owner: Any, source: str = Job.Source.WEB, inputs: list[dict[str, Any]],
                require_worker: bool = False) -> list[Job]:
    """Create one queued job per entry of `inputs` (job_create's keyword arguments) if the quotas allow all of
    them, else raise limits.QuotaExceeded; the check and the inserts happen under one admission lock."""
    with limits.admission():
        limits.check_quotas(user=owner, n=len(inputs), require_worker=require_worker)
        return [job_create(owner=owner, source=source, **fields) for fields in inputs]


def job_enqueue(*, job: Job) -> bool:
    """Publish the job's Celery message to the queue of a worker holding its checkpoint (else the default
    queue); on a broker error fail the job with the reason. True when queued."""
    from generation.tasks import send_run_job

    try:
        send_run_job(job.pk, queue=queues.queue_for_new_job(checkpoint_id=job.checkpoint_id))
    except Exception as exc:  # kombu OperationalError, redis ConnectionError, socket errors...
        logger.warning("Could not queue job %s: %s", job.pk, exc)
        reason = f"Could not queue the job: the job queue (Redis) is unreachable ({exc}). Please try again later."
        now = timezone.now()
        Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.FAILED, error=reason, finished_at=now
        )
        job.status, job.error, job.finished_at = Job.Status.FAILED, reason, now
        streams.stream_end(job_id=job.pk, status=Job.Status.FAILED)
        return False
    return True


# --- user actions --------------------------------------------------------------------------------------------


def job_cancel(*, job: Job) -> bool:
    """Cancel a queued or running job. True when it changed.

    A queued job is never claimed after this (the claim is conditional on `queued`) and its stream ends here;
    a running one is told over Redis and stops before the engine's next decode step, keeping its partial
    output (the worker saves it and ends the stream).
    """
    now = timezone.now()
    cancelled = {"status": Job.Status.CANCELLED, "finished_at": now, "error": "cancelled by the user"}
    if Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(**cancelled):
        streams.stream_end(job_id=job.pk, status=Job.Status.CANCELLED)
    elif Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(**cancelled):
        streams.cancel_publish(job_id=job.pk)
    else:
        return False
    job.refresh_from_db()
    return True


def job_delete(*, job: Job) -> None:
    """Delete the job; if a worker is running it, the worker notices within a second and stops generating."""
    job.delete()


def job_rerun_initial(*, job: Job) -> dict[str, Any]:
    """Initial data for the new-job form that repeats `job` (its checkpoint only while it is still ready)."""
    initial: dict[str, Any] = {
        **job.inputs(),
        "language": job.options.get("language", prompts.DEFAULT_LANGUAGE),
        "length": job.options.get("length", prompts.DEFAULT_LENGTH),
        "checkpoint": job.checkpoint.pk if job.checkpoint.is_ready else None,
    }
    return initial


def job_replay(*, job: Job) -> Job:
    """A new queued job with the same task, input, parameters and checkpoint (used for API jobs, whose
    chat messages or raw prompt the new-job form cannot express)."""
    inputs = job.inputs()
    [new] = jobs_submit(owner=job.owner, source=inputs.pop("source"), inputs=[inputs])
    return new


def jobs_cancel_unfinished(*, job_ids: list[int]) -> None:
    """Cancel those of the jobs that are still queued or running (an API client went away)."""
    for job in Job.objects.filter(pk__in=job_ids, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]):
        job_cancel(job=job)


# --- API keys ------------------------------------------------------------------------------------------------


def api_key_create(*, owner: Any, name: str) -> tuple[ApiKey, str]:
    """A new key for `owner`; returns the row and the secret, which is not stored and cannot be shown again."""
    secret = ApiKey.PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        owner=owner, name=name.strip() or "key", key_hash=api_key_hash(secret), hint=secret[: len(ApiKey.PREFIX) + 4]
    )
    return key, secret


def api_key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_revoke(*, key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()


def api_key_delete(*, key: ApiKey) -> bool:
    """Remove a revoked key from the list; an active key is kept (it must be revoked first). True if removed."""
    deleted, _ = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=False).delete()
    return bool(deleted)


def api_key_authenticate(*, secret: str) -> Any | None:
    """The owner of an active key with this secret (and mark it used), else None."""
    key = ApiKey.objects.select_related("owner").filter(key_hash=api_key_hash(secret), revoked_at__isnull=True).first()
    if key is None or not key.owner.is_active:
        return None
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return key.owner
