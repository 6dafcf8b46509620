"""Jobs: one prompt of one user, run once by a worker. Derived values of one job are methods here."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models
from django.urls import reverse

from generation import confidence
from modelzoo.models import WEB_TASKS, Task

if TYPE_CHECKING:
    from modelzoo.engine.sampling import SamplingParams


class Conversation(models.Model):
    """A chat thread of one user: a system prompt and turns, each turn a Job (task chat) linked here.

    `preamble` holds messages carried over from elsewhere (the earlier messages of an API chat job opened as
    a conversation): they come before the first turn, as if they had been turns of this thread."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    preset = models.CharField(max_length=20, blank=True, help_text="The system-prompt preset it started from")
    checkpoint = models.ForeignKey("modelzoo.Checkpoint", on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="conversations", help_text="Empty: the chat task's default")
    preamble = models.JSONField(default=list, blank=True, help_text='[{"role": ..., "content": ...}, ...]')
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("generation:conversation_detail", args=[self.pk])


class Job(models.Model):
    Task = Task
    WEB_TASKS = WEB_TASKS

    class Source(models.TextChoices):
        WEB = "web", "Web"
        API = "api", "API"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    class Rating(models.IntegerChoices):
        UP = 1, "Good answer"
        DOWN = -1, "Bad answer"

    #: The sampling settings of a job (their bounds: generation.limits).
    SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "repetition_penalty")
    #: What the user asked for: a replay copies exactly these.
    INPUT_FIELDS = ("task", "prompt", "context", "options", "checkpoint", *SAMPLING_FIELDS, "prompt_tokens", "source")

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    task = models.CharField(max_length=20, choices=Task.choices)
    prompt = models.TextField()
    context = models.TextField(blank=True, help_text="Source text a QA answer must come from")
    options = models.JSONField(default=dict, blank=True, help_text='Per-task options: {"language": ...} or {"length": ...}')

    temperature = models.FloatField(default=0.0)
    top_p = models.FloatField(default=1.0)
    top_k = models.PositiveIntegerField(default=0)
    max_tokens = models.PositiveIntegerField(default=256)
    seed = models.BigIntegerField(null=True, blank=True)
    repetition_penalty = models.FloatField(default=1.0)

    checkpoint = models.ForeignKey("modelzoo.Checkpoint", on_delete=models.PROTECT, related_name="jobs")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)
    conversation = models.ForeignKey(Conversation, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="turns")

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    output = models.TextField(blank=True)
    #: when asked (options["logprobs"] = N): per generated token [text, logprob, [[alternative, logprob], ...]]
    logprobs = models.JSONField(null=True, blank=True)
    #: the mean of `logprobs`' values (generation.confidence.mean_logprob), set with them; the history sorts by it
    mean_logprob = models.FloatField(null=True, blank=True, db_index=True,
                                     help_text="Mean token log-probability; exp() of it is the confidence shown")
    error = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    batch_size = models.PositiveIntegerField(null=True, blank=True, help_text="Largest batch the job ran in")
    decode_s = models.FloatField(null=True, blank=True, help_text="Seconds of decoding after the first token")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: While running: the worker renews this; past it the job's worker is taken for gone (runner.jobs_reconcile).
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    rating = models.SmallIntegerField(choices=Rating.choices, null=True, blank=True, db_index=True)
    rating_comment = models.TextField(blank=True)
    rated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.task}, {self.status})"

    def get_absolute_url(self) -> str:
        return reverse("generation:job_detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES

    @property
    def is_cancellable(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    def ttft(self) -> float | None:
        """Seconds from the start of the run to the first generated token."""
        if self.started_at is None or self.first_token_at is None:
            return None
        return max(0.0, (self.first_token_at - self.started_at).total_seconds())

    def queue_wait(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.started_at - self.created_at).total_seconds())

    def ttft_from_submission(self) -> float | None:
        """Seconds from submission to the first token: what the user waited (queue wait + engine's ttft)."""
        if self.first_token_at is None:
            return None
        return max(0.0, (self.first_token_at - self.created_at).total_seconds())

    def elapsed(self) -> float | None:
        """Seconds from submission to the end."""
        if self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.created_at).total_seconds())

    #: How the job page words why a generation ended.
    FINISH_TEXTS = {"length": "stopped at the token limit", "stop": "stopped at the end of the answer",
                    "timeout": "stopped at the time limit", "cancelled": "stopped by you"}

    def finish_text(self) -> str:
        if self.status == self.Status.CANCELLED:
            return self.FINISH_TEXTS["cancelled"]
        if self.status == self.Status.FAILED and self.finish_reason != "timeout":
            return ""
        return self.FINISH_TEXTS.get(self.finish_reason, "") if self.is_finished else ""

    @property
    def stopped_at_length(self) -> bool:
        return self.status == self.Status.SUCCEEDED and self.finish_reason == "length"

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages of a chat job as sent to the model (system prompt included), else []."""
        if self.task != self.Task.CHAT:
            return []
        return [m for m in self.options.get("messages") or [] if isinstance(m, dict)]

    def answer_so_far(self) -> str:
        """For a continuation (services.job_continue): the answer it continues, which its own output extends."""
        if not self.options.get("continues"):
            return ""
        if self.task == self.Task.COMPLETION:
            return str(self.options.get("answer_so_far", ""))
        assistant = [m for m in self.chat_messages() if m.get("role") == "assistant"]
        return str(assistant[-1]["content"]) if assistant else ""

    def full_output(self) -> str:
        """The whole answer the job page shows: the answer it continues (if any) and its own output."""
        return self.answer_so_far() + self.output

    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())

    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token, as the engine measured it."""
        if not self.completion_tokens or self.completion_tokens < 2 or not self.decode_s:
            return None
        return (self.completion_tokens - 1) / self.decode_s

    def sampling(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SAMPLING_FIELDS}

    def inputs(self) -> dict[str, Any]:
        """The keyword arguments of services.job_create that repeat this job."""
        return {name: getattr(self, name) for name in self.INPUT_FIELDS}

    def sampling_params(self) -> SamplingParams:
        """The engine's sampling parameters for this job (stop strings come from its options)."""
        from modelzoo.engine.sampling import SamplingParams  # torch loads only where jobs run

        return SamplingParams(**self.sampling(),
                              stop=tuple(self.options.get("stop") or ()), logprobs=self.options.get("logprobs"))

    def confidence(self) -> float | None:
        """The mean token probability the pages show, 0..1: exp(mean_logprob), the tokens' geometric mean."""
        return confidence.probability(self.mean_logprob)

    def language(self) -> str:
        return str(self.options.get("language", "")) if self.task == self.Task.CODE else ""

    def length(self) -> str:
        return str(self.options.get("length", "")) if self.task == self.Task.SUMMARIZE else ""

    def to_dict(self) -> dict:
        """The job's state as the JSON endpoint returns it."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.pk,
            "task": self.task,
            "source": self.source,
            "status": self.status,
            "is_finished": self.is_finished,
            "prompt": self.prompt,
            "context": self.context,
            "options": self.options,
            "checkpoint": self.checkpoint.name,
            "params": self.sampling(),
            "output": self.output,
            "error": self.error,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "attempts": self.attempts,
            "batch_size": self.batch_size,
            "ttft_s": self.ttft(),
            "tokens_per_s": self.tokens_per_s(),
            "queue_wait_s": self.queue_wait(),
            "ttft_from_submission_s": self.ttft_from_submission(),
            "elapsed_s": self.elapsed(),
            "finish_text": self.finish_text(),
            "conversation_id": self.conversation_id,
            "answer_so_far": self.answer_so_far(),
            "mean_logprob": self.mean_logprob,
            "confidence": self.confidence(),
            "logprobs": self.logprobs,
            "rating": self.rating,
            "rating_comment": self.rating_comment,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "first_token_at": iso(self.first_token_at),
            "finished_at": iso(self.finished_at),
        }


class ApiKey(models.Model):
    """A user's key for the /v1 API. Only the SHA-256 of the secret is stored; the secret is shown once."""

    PREFIX = "sk-llmsite-"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=32, help_text="The start of the key, to recognise it")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
