"""The rules a request must keep, one home for each: the bounds of every parameter, the context window, and the
quotas. The new-job form, the /v1 API and `manage.py generate` all call these, so one request gets the same
answer everywhere; each interface only words the answer its own way."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from generation import prompts
from generation.fleet import registry
from generation.models import Job
from llmsite import redis_client
from modelzoo import pool
from modelzoo.models import Checkpoint


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a number (the low end open when `low_open`)."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}]"


TEMPERATURE = Range(0.0, 2.0)
TOP_P = Range(0.0, 1.0, low_open=True)
TOP_K = Range(0, 1000)
MAX_TOKENS = Range(1, 8192)  # and at most what the context window leaves after the prompt
SEED = Range(0, 2**63 - 1)  # Job.seed is a signed 64-bit column
REPETITION_PENALTY = Range(0.5, 2.0)
N = Range(1, 8)  # choices per API request
MAX_STOP_STRINGS = 4

SAMPLING_RANGES: dict[str, Range] = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "top_k": TOP_K,
    "max_tokens": MAX_TOKENS,
    "seed": SEED,
    "repetition_penalty": REPETITION_PENALTY,
}


# --- the context window --------------------------------------------------------------------------------------


class ContextTooLong(ValueError):
    """The prompt alone does not fit (`max_tokens` is None), or the prompt plus `max_tokens` new tokens do not."""

    def __init__(self, *, prompt_tokens: int, max_tokens: int | None, window: int) -> None:
        self.prompt_tokens, self.max_tokens, self.window = prompt_tokens, max_tokens, window
        if max_tokens is None:
            message = f"the prompt is {prompt_tokens} tokens; the context window holds {window}"
        else:
            message = (f"the prompt ({prompt_tokens} tokens) and {max_tokens} new tokens exceed the "
                       f"{window}-token context window")
        super().__init__(message)

    @property
    def prompt_too_long(self) -> bool:
        return self.max_tokens is None

    @property
    def room(self) -> int:
        """How many new tokens would fit after this prompt."""
        return max(0, self.window - self.prompt_tokens)


@dataclass(frozen=True)
class Fit:
    prompt_ids: list[int]
    max_tokens: int
    window: int


def context_window(checkpoint: Checkpoint) -> int:
    return pool.context_window(checkpoint)


def fit_context(*, checkpoint: Checkpoint, task: str, prompt: str, context: str = "", options: dict | None = None,
                max_tokens: int | None = None, default_max_tokens: int | None = None) -> Fit:
    """Tokenize the job's prompt with the checkpoint's own tokenizer and template and check it fits the context
    window with `max_tokens` new tokens (or, when None, with `default_max_tokens` trimmed to what fits).
    Raises ContextTooLong; reading the checkpoint's metadata may raise too (an unreadable file)."""
    info = pool.checkpoint_info(checkpoint)
    window = context_window(checkpoint)
    ids = prompts.prompt_token_ids(info=info, task=task, prompt=prompt, context=context, options=options)
    if len(ids) + 1 > window:
        raise ContextTooLong(prompt_tokens=len(ids), max_tokens=None, window=window)
    if max_tokens is None:
        wanted = default_max_tokens or prompts.TASK_DEFAULTS.get(task, prompts.TASK_DEFAULTS[Job.Task.CHAT]).max_tokens
        return Fit(prompt_ids=ids, max_tokens=min(wanted, window - len(ids)), window=window)
    if len(ids) + max_tokens > window:
        raise ContextTooLong(prompt_tokens=len(ids), max_tokens=max_tokens, window=window)
    return Fit(prompt_ids=ids, max_tokens=max_tokens, window=window)


# --- quotas --------------------------------------------------------------------------------------------------


class QuotaExceeded(Exception):
    """A limit on how much one user (or everybody) may have waiting. `status` is 429, or 503 when no worker
    is alive to serve anything. `retry_after_s` is when trying again may succeed (the API's Retry-After, the
    form's wording): the rate limit's own estimate, else a few seconds (a full queue or too many unfinished
    jobs drain as jobs finish), a little longer for a 503 (a worker starting or coming back)."""

    def __init__(self, message: str, *, code: str, status: int = 429, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status
        if retry_after_s is None:
            retry_after_s = UNAVAILABLE_RETRY_AFTER_S if status == 503 else BUSY_RETRY_AFTER_S
        self.retry_after_s = retry_after_s


#: QuotaExceeded.retry_after_s when the limit gives no estimate of its own.
BUSY_RETRY_AFTER_S = 5
UNAVAILABLE_RETRY_AFTER_S = 10


def rate_limit_retry_after_s(*, user: Any, n: int, limit: int) -> int:
    """Seconds until the per-minute window of check_quotas (the user's jobs of the last minute) has room for
    `n` more: when the job whose leaving makes that room turns a minute old. 1 to 60."""
    now = timezone.now()
    times = list(Job.objects.filter(owner=user, created_at__gte=now - timedelta(minutes=1))
                 .order_by("created_at").values_list("created_at", flat=True))
    excess = len(times) + n - limit  # how many of them must leave the window
    if excess <= 0:
        return 1
    if excess > len(times):  # n alone is over the limit: no wait is enough; say the whole window
        return 60
    frees_in = (times[excess - 1] + timedelta(minutes=1) - now).total_seconds()
    return max(1, min(60, int(frees_in) + 1))


#: Serializes admissions (the quota counts and the inserts they allow) across web processes and threads.
ADMISSION_LOCK_KEY = "llmsite:admission"


@contextmanager
def admission() -> Iterator[None]:
    """Hold the admission lock while checking quotas and creating the jobs they allow, so concurrent requests
    cannot all pass a check that only one of them should (the check and the insert are one step). The lock is
    in Redis, which every web process shares; without Redis nothing can be queued anyway, so admission goes
    on unlocked and the publish reports the outage."""
    try:
        lock = redis_client.client().lock(ADMISSION_LOCK_KEY, timeout=10, blocking_timeout=15)
        acquired = lock.acquire()
    except redis.RedisError:
        yield
        return
    if not acquired:
        raise QuotaExceeded("The site is busy admitting other jobs; try again in a moment", code="busy",
                            status=503)
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.RedisError:  # expired meanwhile (a stall over 10 s): nothing left to release
            pass


def check_quotas(*, user: Any, n: int, require_worker: bool = False) -> None:
    """Raise QuotaExceeded when `n` more jobs of `user` would pass the per-minute rate, the user's unfinished
    jobs or the queue's length (web and API alike), or, with `require_worker` (the API, whose clients wait for
    the answer), when no worker is alive. Call it inside admission()."""
    limit = settings.API_RATE_LIMIT_PER_MIN
    if limit:
        since = timezone.now() - timedelta(minutes=1)
        if Job.objects.filter(owner=user, created_at__gte=since).count() + n > limit:
            raise QuotaExceeded(f"Rate limit reached: {limit} jobs per minute", code="rate_limit_exceeded",
                                retry_after_s=rate_limit_retry_after_s(user=user, n=n, limit=limit))
    limit = settings.API_MAX_ACTIVE_JOBS_PER_USER
    active = Job.objects.filter(owner=user, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()
    if limit and active + n > limit:
        raise QuotaExceeded(f"Too many unfinished jobs: at most {limit} per user", code="rate_limit_exceeded")
    limit = settings.QUEUE_MAX_LENGTH
    if limit and Job.objects.filter(status=Job.Status.QUEUED).count() + n > limit:
        raise QuotaExceeded("The job queue is full; try again later", code="queue_full")
    if require_worker and not registry.live_count():
        raise QuotaExceeded("No worker is available to serve the request; try again later", code="no_worker",
                            status=503)
