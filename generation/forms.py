"""The new-job form: every check a submission needs, each error next to its field."""
from __future__ import annotations

from typing import Any

from django import forms

from generation import prompts
from generation.models import Job
from modelzoo import pool
from modelzoo.models import Checkpoint

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "repetition_penalty")


class CheckpointChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        roles = (["default"] if obj.is_default else []) + [f"default for {d.task}" for d in obj.task_defaults.all()]
        return f"{obj.name} ({', '.join(roles)})" if roles else obj.name


class JobForm(forms.Form):
    task = forms.ChoiceField(choices=[c for c in Job.Task.choices if c[0] in Job.WEB_TASKS], initial=Job.Task.CODE)
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        error_messages={"required": "Enter a prompt."},
        help_text="Code: what to write. QA: your question. Summarize: the text to summarize.",
    )
    context = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="Question answering only: the answer must come from this text.",
    )
    language = forms.ChoiceField(
        choices=list(prompts.LANGUAGES.items()), initial=prompts.DEFAULT_LANGUAGE, required=False
    )
    length = forms.ChoiceField(
        choices=[(key, key.capitalize()) for key in prompts.LENGTHS], initial=prompts.DEFAULT_LENGTH, required=False
    )
    checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.ready().prefetch_related("task_defaults"),
        required=False,
        empty_label="The task's default",
        error_messages={"invalid_choice": "Choose one of the available checkpoints."},
    )
    # Advanced: blank means the task's default (prompts.TASK_DEFAULTS).
    temperature = forms.FloatField(required=False, min_value=0.0, max_value=2.0, help_text="0 = greedy")
    top_p = forms.FloatField(required=False, min_value=0.0, max_value=1.0)
    top_k = forms.IntegerField(required=False, min_value=0, max_value=1000, help_text="0 = off")
    max_tokens = forms.IntegerField(required=False, min_value=1, max_value=8192)
    seed = forms.IntegerField(required=False, min_value=0, max_value=2**32 - 1)
    repetition_penalty = forms.FloatField(required=False, min_value=0.5, max_value=2.0, help_text="1 = off")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_tokens: int | None = None

    def clean_top_p(self) -> float | None:
        top_p = self.cleaned_data.get("top_p")
        if top_p is not None and top_p <= 0:
            raise forms.ValidationError("Ensure this value is greater than 0.")
        return top_p

    def clean_checkpoint(self) -> Checkpoint:
        checkpoint = self.cleaned_data.get("checkpoint") or Checkpoint.default(task=self.cleaned_data.get("task"))
        if checkpoint is None:
            raise forms.ValidationError("No checkpoint is ready; ask an administrator to add one.")
        return checkpoint

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        task = data.get("task")
        if not task:
            return data
        defaults = prompts.TASK_DEFAULTS[task]
        for name in SAMPLING_FIELDS:
            if name != "seed" and data.get(name) is None and name not in self.errors:
                data[name] = getattr(defaults, name)
        data["language"] = data.get("language") or prompts.DEFAULT_LANGUAGE
        data["length"] = data.get("length") or prompts.DEFAULT_LENGTH
        if data.get("prompt") and data.get("checkpoint") and "max_tokens" not in self.errors:
            self._check_context_window(data)
        return data

    def _check_context_window(self, data: dict[str, Any]) -> None:
        """Prompt tokens + max_tokens must fit the checkpoint's context, counted with its real tokenizer."""
        checkpoint: Checkpoint = data["checkpoint"]
        try:
            info = pool.checkpoint_info(checkpoint)
        except Exception as exc:  # a missing or unreadable file: the user can pick another checkpoint
            self.add_error("checkpoint", f"Checkpoint {checkpoint.name} cannot be read right now ({exc}).")
            return
        window = pool.context_window(checkpoint)
        context = data.get("context", "") if data["task"] == Job.Task.QA else ""
        ids = prompts.prompt_token_ids(
            info=info, task=data["task"], prompt=data["prompt"], context=context, options=self._options_of(data)
        )
        n, max_tokens = len(ids), data["max_tokens"]
        self.prompt_tokens = n
        if n + 1 > window:
            field = "context" if context and data["task"] == Job.Task.QA else "prompt"
            self.add_error(
                field,
                f"The prompt is {n} tokens, too long for the {window}-token context window of {checkpoint.name}. "
                "Shorten it.",
            )
        elif n + max_tokens > window:
            self.add_error(
                "max_tokens",
                f"The prompt is {n} tokens, so at most {window - n} new tokens fit in the {window}-token context "
                f"window of {checkpoint.name}; lower max tokens or shorten the prompt.",
            )

    @staticmethod
    def _options_of(data: dict[str, Any]) -> dict[str, str]:
        if data["task"] == Job.Task.CODE:
            return {"language": data["language"]}
        if data["task"] == Job.Task.SUMMARIZE:
            return {"length": data["length"]}
        return {}

    def job_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of services.job_create for a valid form."""
        data = self.cleaned_data
        return {
            "task": data["task"],
            "prompt": data["prompt"],
            "context": data["context"] if data["task"] == Job.Task.QA else "",
            "options": self._options_of(data),
            "checkpoint": data["checkpoint"],
            **{name: data[name] for name in SAMPLING_FIELDS},
            "prompt_tokens": self.prompt_tokens,
        }
