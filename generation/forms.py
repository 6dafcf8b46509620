"""The new-job form: every check a submission needs, each error next to its field."""
from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS

from generation import chat, limits, prompts
from generation.models import Job
from modelzoo.models import Checkpoint


class CheckpointChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        roles = (["default"] if obj.is_default else []) + [f"default for {d.task}" for d in obj.task_defaults.all()]
        return f"{obj.name} ({', '.join(roles)})" if roles else obj.name


def _bounded(field_class: type[forms.Field], bounds: limits.Range, **kwargs: Any) -> forms.Field:
    """An optional number field that keeps `bounds` (an open low end is checked in JobForm.clean)."""
    return field_class(required=False, min_value=bounds.low, max_value=bounds.high, **kwargs)


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
    # Advanced: blank means the task's default (prompts.TASK_DEFAULTS); the bounds are generation.limits'.
    temperature = _bounded(forms.FloatField, limits.TEMPERATURE, help_text="0 = greedy")
    top_p = _bounded(forms.FloatField, limits.TOP_P)
    top_k = _bounded(forms.IntegerField, limits.TOP_K, help_text="0 = off")
    max_tokens = _bounded(forms.IntegerField, limits.MAX_TOKENS)
    seed = _bounded(forms.IntegerField, limits.SEED)
    repetition_penalty = _bounded(forms.FloatField, limits.REPETITION_PENALTY, help_text="1 = off")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_tokens: int | None = None

    def clean_checkpoint(self) -> Checkpoint:
        checkpoint = self.cleaned_data.get("checkpoint") or Checkpoint.default(task=self.cleaned_data.get("task"))
        if checkpoint is None:
            raise forms.ValidationError("No checkpoint is ready; ask an administrator to add one.")
        return checkpoint

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for name, bounds in limits.SAMPLING_RANGES.items():
            value = data.get(name)
            if bounds.low_open and value is not None and value not in bounds:
                self.add_error(name, f"Ensure this value is greater than {bounds.low}.")
        task = data.get("task")
        if not task:
            return data
        defaults = prompts.TASK_DEFAULTS[task]
        for name in Job.SAMPLING_FIELDS:
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
        context = data.get("context", "") if data["task"] == Job.Task.QA else ""
        try:
            fit = limits.fit_context(checkpoint=checkpoint, task=data["task"], prompt=data["prompt"],
                                     context=context, options=self._options_of(data), max_tokens=data["max_tokens"])
        except limits.ContextTooLong as exc:
            self.prompt_tokens = exc.prompt_tokens
            if exc.prompt_too_long:
                self.add_error("context" if context else "prompt",
                               f"The prompt is {exc.prompt_tokens} tokens, too long for the {exc.window}-token "
                               f"context window of {checkpoint.name}. Shorten it.")
            else:
                self.add_error("max_tokens",
                               f"The prompt is {exc.prompt_tokens} tokens, so at most {exc.room} new tokens fit in "
                               f"the {exc.window}-token context window of {checkpoint.name}; lower max tokens or "
                               "shorten the prompt.")
            return
        except Exception as exc:  # a missing or unreadable file: the user can pick another checkpoint
            self.add_error("checkpoint", f"Checkpoint {checkpoint.name} cannot be read right now ({exc}).")
            return
        self.prompt_tokens = len(fit.prompt_ids)

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
            **{name: data[name] for name in Job.SAMPLING_FIELDS},
            "prompt_tokens": self.prompt_tokens,
        }


# --- conversations -------------------------------------------------------------------------------------------


def context_error_text(exc: limits.ContextTooLong, *, checkpoint: Checkpoint) -> str:
    """How the conversation forms word a message that does not fit even without the earlier turns."""
    if exc.prompt_too_long:
        return (f"This message is {exc.prompt_tokens} tokens with the system prompt, too long for the "
                f"{exc.window}-token context window of {checkpoint.name}. Shorten it.")
    return (f"This message is {exc.prompt_tokens} tokens with the system prompt, so at most {exc.room} new tokens "
            f"fit in the {exc.window}-token context window of {checkpoint.name}; lower max tokens or shorten it.")


class ChatSamplingMixin(forms.Form):
    """The two sampling settings a chat message may change (blank: the chat task's default)."""

    max_tokens = _bounded(forms.IntegerField, limits.MAX_TOKENS, help_text="Blank: up to "
                          f"{prompts.TASK_DEFAULTS[Job.Task.CHAT].max_tokens}, or what the context window leaves")
    temperature = _bounded(forms.FloatField, limits.TEMPERATURE, help_text="0 = greedy")


class ConversationMessageForm(ChatSamplingMixin):
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Your message"}),
                              error_messages={"required": "Write a message."}, label="Message")
    field_order = ["message", "max_tokens", "temperature"]


class ConversationForm(ConversationMessageForm):
    """A new conversation: its system prompt (from a preset, edited at will) and the first message."""

    title = forms.CharField(max_length=200, required=False, help_text="Blank: the start of the first message")
    preset = forms.ChoiceField(choices=[("", "As written below"), *((key, preset.label)
                                                                   for key, preset in chat.PRESETS.items())],
                               initial=chat.DEFAULT_PRESET, required=False, label="Start from",
                               help_text="A preset fills in the system prompt below; edit it as you like.")
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                                    initial=chat.PRESETS[chat.DEFAULT_PRESET].system_prompt,
                                    help_text="Sent to the model before every turn. Blank: none.")
    checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.ready().prefetch_related("task_defaults"), required=False,
        empty_label="The default", error_messages={"invalid_choice": "Choose one of the available checkpoints."},
    )
    #: A chat job whose messages this conversation repeats (its preamble); the view checks the owner.
    from_job = forms.IntegerField(required=False, widget=forms.HiddenInput)
    field_order = ["title", "preset", "system_prompt", "checkpoint", "message", "max_tokens", "temperature"]


class ConversationEditForm(forms.Form):
    title = forms.CharField(max_length=200, required=False)
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                                    help_text="Used from the next message on.")


class RatingForm(forms.Form):
    VALUES = {"up": Job.Rating.UP, "down": Job.Rating.DOWN, "clear": None}

    rating = forms.ChoiceField(choices=[(key, key) for key in VALUES])
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=2000)

    def rating_value(self) -> int | None:
        return self.VALUES[self.cleaned_data["rating"]]


# --- compare -------------------------------------------------------------------------------------------------

#: The tasks a comparison runs: the new-job form's, and a chat message under a system prompt of one's own.
COMPARE_TASKS = [*JobForm.base_fields["task"].choices, (Job.Task.CHAT.value, Job.Task.CHAT.label)]
COMPARE_SIDES = ("a", "b")
#: What each column sets for itself (CompareForm's `<name>_a`, `<name>_b`); the rest of the input is shared.
COMPARE_SIDE_FIELDS = ("checkpoint", "temperature", "max_tokens")
COMPARE_SHARED_FIELDS = ("task", "prompt", "system_prompt", "context", "language", "length", "seed")


class CompareSideForm(JobForm):
    """One column of a comparison as one new job: JobForm's checks (bounds, the task's defaults for what is
    blank, the context window counted with the column's own checkpoint), plus the chat task, whose message is
    sent under `system_prompt`."""

    task = forms.ChoiceField(choices=COMPARE_TASKS)
    system_prompt = forms.CharField(required=False)

    @staticmethod
    def _options_of(data: dict[str, Any]) -> dict[str, Any]:
        if data["task"] == Job.Task.CHAT:
            user = {"role": "user", "content": data["prompt"]}
            return {"messages": [*chat.system_messages(data.get("system_prompt") or ""), user]}
        return JobForm._options_of(data)


class CompareForm(forms.Form):
    """One input and two columns of settings, each column a job (generation/compare.py submits both). Each column
    is checked as the new-job form checks a job (CompareSideForm, so the bounds and the context window are
    JobForm's), and its errors are put next to this form's fields: a column's own settings, or the shared input
    when only one column's checkpoint cannot take it."""

    task = forms.ChoiceField(choices=COMPARE_TASKS, initial=Job.Task.CODE)
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), error_messages={"required": "Enter a prompt."},
                             help_text="Code: what to write. QA: your question. Summarize: the text to summarize. "
                                       "Chat: your message.")
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                    initial=chat.PRESETS[chat.DEFAULT_PRESET].system_prompt,
                                    help_text="Chat only: sent before your message. Blank: none.")
    context = copy.deepcopy(JobForm.base_fields["context"])
    language = copy.deepcopy(JobForm.base_fields["language"])
    length = copy.deepcopy(JobForm.base_fields["length"])
    seed = _bounded(forms.IntegerField, limits.SEED,
                    help_text="Both columns use it, so sampling differs only by the settings. Blank: random.")
    checkpoint_a = copy.deepcopy(JobForm.base_fields["checkpoint"])
    temperature_a = _bounded(forms.FloatField, limits.TEMPERATURE, label="Temperature",
                             help_text="Blank: the task's default. 0 = greedy.")
    max_tokens_a = _bounded(forms.IntegerField, limits.MAX_TOKENS, label="Max tokens",
                            help_text="Blank: the task's default.")
    checkpoint_b = copy.deepcopy(checkpoint_a)
    temperature_b = copy.deepcopy(temperature_a)
    max_tokens_b = copy.deepcopy(max_tokens_a)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for side in COMPARE_SIDES:
            self.fields[f"checkpoint_{side}"].label = "Checkpoint"
        self.sides: dict[str, CompareSideForm] = {}

    def column_fields(self) -> list[tuple[str, list[forms.BoundField]]]:
        """Each column's side ("a", "b") and its fields, for the template."""
        return [(side, [self[f"{name}_{side}"] for name in COMPARE_SIDE_FIELDS]) for side in COMPARE_SIDES]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        own_errors = set(self.errors)  # this form's own checks; a column repeats them, so they are said once
        for side in COMPARE_SIDES:
            form = CompareSideForm(self._side_data(side))
            if form.is_valid():
                self.sides[side] = form
                continue
            for name, errors in form.errors.items():
                key = f"{name}_{side}" if name in COMPARE_SIDE_FIELDS else name if name in self.fields else None
                if key in own_errors:
                    continue
                for error in errors:
                    text = error if key is not None else f"Column {side.upper()}: {error}"
                    if text not in self.errors.get(key or NON_FIELD_ERRORS, []):
                        self.add_error(key, text)
        return data

    def _side_data(self, side: str) -> dict[str, Any]:
        raw = {name: self.data.get(name, "") for name in COMPARE_SHARED_FIELDS}
        raw.update({name: self.data.get(f"{name}_{side}", "") for name in COMPARE_SIDE_FIELDS})
        return raw

    def jobs_kwargs(self) -> list[dict[str, Any]]:
        """Keyword arguments of services.job_create for each column of a valid form, A then B."""
        return [self.sides[side].job_kwargs() for side in COMPARE_SIDES]
