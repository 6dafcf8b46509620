"""Reads of the generation app."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Min, Q, QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from generation import confidence as confidence_rules
from generation.models import ApiKey, Conversation, Job
from modelzoo.models import Checkpoint

#: The history's rating filter: value -> its label and the jobs it keeps.
RATING_FILTERS: dict[str, tuple[str, Q]] = {
    "up": ("Rated good", Q(rating=Job.Rating.UP)),
    "down": ("Rated bad", Q(rating=Job.Rating.DOWN)),
    "rated": ("Rated", Q(rating__isnull=False)),
    "unrated": ("Not rated", Q(rating__isnull=True)),
}


#: The history's confidence filter: value -> its label and the jobs it keeps (Job.mean_logprob: the mean token
#: probability exp(mean_logprob) below the bound; jobs without log-probabilities have no mean and are left out).
CONFIDENCE_FILTERS: dict[str, tuple[str, Q]] = {
    f"below-{percent}": (f"Below {percent}%", Q(mean_logprob__lt=confidence_rules.percent_logprob(percent)))
    for percent in confidence_rules.CONFIDENCE_BELOW_PERCENT
}
CONFIDENCE_FILTERS["unmeasured"] = ("Not measured", Q(mean_logprob__isnull=True))

NEWEST_FIRST = ("-created_at", "-id")
#: The history's orders: value -> its label and the ordering ("" is the default). Jobs without a mean come last.
HISTORY_SORTS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "": ("Newest first", NEWEST_FIRST),
    "oldest": ("Oldest first", ("created_at", "id")),
    "least-sure": ("Least sure first", (F("mean_logprob").asc(nulls_last=True), *NEWEST_FIRST)),
    "most-sure": ("Most sure first", (F("mean_logprob").desc(nulls_last=True), *NEWEST_FIRST)),
}


def job_list_for_user(*, user: Any, task: str = "", status: str = "", q: str = "", rating: str = "",
                      confidence: str = "", sort: str = "") -> QuerySet[Job]:
    """The user's jobs, optionally filtered by task, status, rating (a key of RATING_FILTERS), confidence (a key
    of CONFIDENCE_FILTERS) and a search in the prompt; in the order `sort` names (a key of HISTORY_SORTS; newest
    first by default)."""
    ordering = HISTORY_SORTS.get(sort, HISTORY_SORTS[""])[1]
    jobs = Job.objects.filter(owner=user).select_related("checkpoint").order_by(*ordering)
    if confidence in CONFIDENCE_FILTERS:
        jobs = jobs.filter(CONFIDENCE_FILTERS[confidence][1])
    if task:
        jobs = jobs.filter(task=task)
    if status:
        jobs = jobs.filter(status=status)
    if rating in RATING_FILTERS:
        jobs = jobs.filter(RATING_FILTERS[rating][1])
    if q.strip():
        jobs = jobs.filter(Q(prompt__icontains=q.strip()))
    return jobs


def job_get_for_user(*, user: Any, job_id: int) -> Job:
    """The user's job; Http404 for a job of anybody else, exactly as for one that does not exist."""
    return get_object_or_404(Job.objects.select_related("checkpoint"), pk=job_id, owner=user)


def job_can_continue(*, job: Job) -> bool:
    """Whether a Continue can extend the job's answer (services.job_continue): it stopped at the token limit,
    and in a conversation it is the newest turn."""
    if not job.stopped_at_length:
        return False
    return not (job.conversation_id and Job.objects.filter(conversation_id=job.conversation_id, pk__gt=job.pk).exists())


def conversation_list_for_user(*, user: Any) -> QuerySet[Conversation]:
    """The user's conversations, the most recently active first, with their number of turns."""
    return Conversation.objects.filter(owner=user).annotate(n_turns=Count("turns")).order_by("-updated_at", "-id")


def conversation_get_for_user(*, user: Any, conversation_id: int) -> Conversation:
    """The user's conversation; Http404 for anybody else's, exactly as for one that does not exist."""
    return get_object_or_404(Conversation.objects.select_related("checkpoint"), pk=conversation_id, owner=user)


def conversation_turns(*, conversation: Conversation) -> list[Job]:
    """The conversation's turns, oldest first."""
    return list(conversation.turns.select_related("checkpoint").order_by("created_at", "id"))


def jobs_waiting_exist(*, checkpoint_id: int) -> bool:
    return Job.objects.filter(status=Job.Status.QUEUED, checkpoint_id=checkpoint_id).exists()


def jobs_in_fair_order(*, checkpoint_id: int, first: int | None = None, limit: int = 8) -> list[int]:
    """Ids of the checkpoint's queued jobs in the order workers take them: each user's oldest queued job, the
    user with the fewest running jobs first, then the user whose oldest job waited longest. A user's backlog
    thus delays another user's job by at most the jobs already running, whatever arrived first. `first` is
    tried first when it is its owner's oldest job and its owner is among the least served (the usual case:
    the message's own job)."""
    heads = (Job.objects.filter(status=Job.Status.QUEUED, checkpoint_id=checkpoint_id)
             .values("owner_id").annotate(head=Min("id")).values_list("owner_id", "head"))
    heads = list(heads)
    if not heads:
        return []
    running = dict(Job.objects.filter(status=Job.Status.RUNNING, owner_id__in=[owner for owner, _ in heads])
                   .values("owner_id").annotate(n=Count("id")).values_list("owner_id", "n"))
    order = sorted(heads, key=lambda row: (running.get(row[0], 0), row[1] != first, row[1]))
    return [head for _, head in order[:limit]]


#: A running job is overdue this long after its time limit (the engine's deadline plus its final save).
OVERDUE_MARGIN = timedelta(minutes=1)


def jobs_overdue() -> QuerySet[Job]:
    """Running jobs past their time limit plus OVERDUE_MARGIN, or whose lease expired."""
    now = timezone.now()
    late = now - timedelta(seconds=settings.JOB_TIME_LIMIT_S) - OVERDUE_MARGIN
    return Job.objects.filter(status=Job.Status.RUNNING).filter(Q(started_at__lt=late) | Q(lease_expires_at__lt=now))


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


def api_model_ids() -> list[str]:
    """The model ids /v1/models lists (the ready checkpoints' names), the one jobs default to first."""
    names = list(Checkpoint.objects.ready().order_by("name").values_list("name", flat=True))
    default = Checkpoint.default()
    if default is not None and default.name in names:
        names.remove(default.name)
        names.insert(0, default.name)
    return names
