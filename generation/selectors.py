"""Reads of the generation app."""
from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from generation.models import Job


def job_list_for_user(*, user: Any, task: str = "", status: str = "", q: str = "") -> QuerySet[Job]:
    """The user's jobs, newest first, optionally filtered by task, status and a search in the prompt."""
    jobs = Job.objects.filter(owner=user).select_related("checkpoint").order_by("-created_at", "-id")
    if task:
        jobs = jobs.filter(task=task)
    if status:
        jobs = jobs.filter(status=status)
    if q.strip():
        jobs = jobs.filter(Q(prompt__icontains=q.strip()))
    return jobs


def job_get_for_user(*, user: Any, job_id: int) -> Job:
    """The user's job; Http404 for a job of anybody else, exactly as for one that does not exist."""
    return get_object_or_404(Job.objects.select_related("checkpoint"), pk=job_id, owner=user)


def job_queue_position(*, job: Job) -> int | None:
    """1 for the next queued job to start, 2 for the one after...; None when the job is not queued."""
    if job.status != Job.Status.QUEUED:
        return None
    return Job.objects.filter(status=Job.Status.QUEUED, pk__lt=job.pk).count() + 1


def workers_overview() -> dict[str, Any]:
    """The live workers (resident checkpoints with their names, memory used and budget, running jobs, loads)
    and the messages waiting per queue, for /healthz and the admin. Raises when Redis cannot be read."""
    import time

    from generation import broker_queues, worker_registry
    from modelzoo.models import Checkpoint

    statuses = worker_registry.live_statuses()
    ids = {pk for status in statuses for pk in [*status.get("resident", []), *status.get("loading", [])]}
    names = dict(Checkpoint.objects.filter(pk__in=ids).values_list("pk", "name"))
    now = time.time()

    def named(pks: list[int]) -> list[dict[str, Any]]:
        return [{"id": pk, "name": names.get(pk, "")} for pk in pks]

    workers = [{
        "name": status["name"],
        "resident": named(status.get("resident", [])),
        "loading": named(status.get("loading", [])),
        "memory_used_bytes": status.get("memory_used_bytes", 0),
        "memory_budget_bytes": status.get("memory_budget_bytes", 0),
        "running_jobs": status.get("running_jobs", 0),
        "loads": status.get("loads", 0),
        "evictions": status.get("evictions", 0),
        "heartbeat_age_s": round(max(0.0, now - status.get("heartbeat_at", now)), 1),
    } for status in statuses]
    return {"workers": workers, "queues": broker_queues.depths()}


def api_keys_for_user(*, user: Any) -> QuerySet:
    from generation.models import ApiKey

    return ApiKey.objects.filter(owner=user).order_by("-created_at", "-id")
