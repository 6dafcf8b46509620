"""Reads of the generation app."""
from __future__ import annotations

from typing import Any

from datetime import timedelta

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from generation.models import ApiKey, Job


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


#: Jobs created this recently count as demand for their checkpoint, beside the queued ones.
RECENT_DEMAND = timedelta(minutes=10)


def checkpoint_demand() -> dict[int, int]:
    """Queued jobs plus jobs asked for within RECENT_DEMAND, per checkpoint id (the pool's eviction order)."""
    wanted = Q(status=Job.Status.QUEUED) | Q(created_at__gte=timezone.now() - RECENT_DEMAND)
    rows = Job.objects.filter(wanted).values("checkpoint_id").annotate(n=Count("id"))
    return {row["checkpoint_id"]: row["n"] for row in rows}


def api_keys_for_user(*, user: Any) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=user).order_by("-created_at", "-id")
