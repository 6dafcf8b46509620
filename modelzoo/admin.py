from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse

from modelzoo import pool, services
from modelzoo.models import WEB_TASKS, Checkpoint, Task
from modelzoo.pickles import pickle_refusal

admin.site.site_header = "llmsite administration"
admin.site.site_title = "llmsite admin"
# The app list is two links away on every page (breadcrumbs, Home); its sidebar took a third of the width from
# the tables (checkpoints, workers), whose last columns were then cut off.
admin.site.enable_nav_sidebar = False


class CheckpointUploadForm(forms.ModelForm):
    """The add form: a name and the file; everything else is read from the file by validation."""

    upload = forms.FileField(help_text="A GGUF file, or a .zip of a Hugging Face model folder (config.json, "
                                       "*.safetensors, tokenizer.json or tokenizer.model, tokenizer_config.json). "
                                       "Pickle formats (.bin, .pt, .pth, .ckpt) are refused.")

    class Meta:
        model = Checkpoint
        fields = ["name", "base", "notes"]
        help_texts = {"base": "Only for a LoRA adapter (.zip with adapter_config.json + adapter_model.safetensors)."}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base"].queryset = Checkpoint.objects.ready().exclude(format=Checkpoint.Format.LORA)

    def clean_upload(self):
        upload = self.cleaned_data["upload"]
        if refusal := pickle_refusal(upload.name):
            raise forms.ValidationError(refusal)
        if self.data.get("base") and not upload.name.lower().endswith(".zip"):
            raise forms.ValidationError("A LoRA adapter is uploaded as a .zip of its PEFT folder.")
        if upload.size > settings.CHECKPOINT_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The file is larger than {settings.CHECKPOINT_MAX_UPLOAD_BYTES} bytes.")
        return upload


def parameter_count_display(count: int | None) -> str:
    """135 M, 1.5 B, 52 K: parameter counts as people say them."""
    if count is None:
        return "–"
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return str(count)


def _make_default_for(task: Task):
    """The admin action "Make the default for <task>", named make_default_for_<task>."""

    @admin.action(description=f"Make the default for {task.label.lower()}")
    def action(modeladmin: CheckpointAdmin, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        modeladmin._make_default(request, queryset, task.value)

    action.__name__ = f"make_default_for_{task.value}"
    return action


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    # Few, short columns: the list shares the screen with the admin's sidebar and the filters, and a column past
    # the edge is cut off. The change page shows every field.
    list_display = ("name", "status", "default_for", "format", "architecture_quantization", "context", "parameters",
                    "file_size")
    list_filter = ("status", "format", "is_default")
    search_fields = ("name", "notes", "sha256")
    actions = ["make_default", *(_make_default_for(task) for task in WEB_TASKS), "retire"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = CheckpointUploadForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Checkpoint | None = None):
        if obj is None:
            return ()
        return ("status", "status_reason", "is_default", "format", "base", "architecture", "path", "quantization",
                "context", "parameters", "sha256", "file_size", "uploaded_by", "created")

    def get_fields(self, request: HttpRequest, obj: Checkpoint | None = None):
        if obj is None:
            return ("name", "upload", "base", "notes")
        return ("name", "notes") + tuple(self.get_readonly_fields(request, obj))

    def save_model(self, request: HttpRequest, obj: Checkpoint, form, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        upload = form.cleaned_data["upload"]  # CheckpointUploadForm checked its type and size
        stored = services.checkpoint_store(
            name=obj.name, source=upload, file_name=upload.name, uploaded_by=request.user, notes=obj.notes,
            base=obj.base,
        )
        obj.pk = stored.pk
        obj.refresh_from_db()

    def response_add(self, request: HttpRequest, obj: Checkpoint, post_url_continue: str | None = None) -> HttpResponse:
        """One banner after an upload, saying what happens next (Django's own "was added successfully" would be
        a second one, and says less)."""
        if IS_POPUP_VAR in request.POST:  # the add-another popup of the base field: Django closes it
            return super().response_add(request, obj, post_url_continue)
        self.message_user(request, f"{obj.name} uploaded; it is being validated (refresh to see its status).",
                          messages.SUCCESS)
        if "_continue" in request.POST:
            return HttpResponseRedirect(reverse("admin:modelzoo_checkpoint_change", args=[obj.pk]))
        if "_addanother" in request.POST:
            return HttpResponseRedirect(request.path)
        return self.response_post_save_add(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Checkpoint]:
        return super().get_queryset(request).select_related("base").prefetch_related("task_defaults")

    @admin.display(description="Default for", ordering="-is_default")
    def default_for(self, obj: Checkpoint) -> str:
        """"all tasks" for the overall default (tasks without their own), then the tasks it is the default of."""
        tasks = sorted(d.task for d in obj.task_defaults.all())
        return ", ".join((["all tasks"] if obj.is_default else []) + tasks) or "–"

    @admin.display(description="Architecture", ordering="architecture")
    def architecture_quantization(self, obj: Checkpoint) -> str:
        """llama · Q4_1, and the base of a LoRA adapter."""
        parts = [obj.architecture or "–"] + ([obj.quantization] if obj.quantization else [])
        return " · ".join(parts) + (f" on {obj.base.name}" if obj.base_id else "")

    @admin.display(description="Context (tokens)", ordering="context_length")
    def context(self, obj: Checkpoint) -> str:
        """What a job may use (prompt + answer), beside the checkpoint's own length when the engine caps it."""
        if not obj.context_length:
            return "–"
        window = pool.window_for(obj.context_length)
        if window < obj.context_length:
            return f"{window:,} (model: {obj.context_length:,})"
        return f"{window:,}"

    @admin.display(description="Parameters", ordering="parameter_count")
    def parameters(self, obj: Checkpoint) -> str:
        return parameter_count_display(obj.parameter_count)

    @admin.display(description="Size", ordering="size")
    def file_size(self, obj: Checkpoint) -> str:
        return filesizeformat(obj.size) if obj.size is not None else "–"

    def _make_default(self, request: HttpRequest, queryset: QuerySet[Checkpoint], task: str | None) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one checkpoint.", messages.ERROR)
            return
        checkpoint = queryset.get()
        try:
            services.checkpoint_make_default(checkpoint=checkpoint, task=task)
        except ValueError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        scope = f"{task} jobs" if task else "every task without its own"
        self.message_user(request, f"{checkpoint.name} is now the default for {scope}.")

    @admin.action(description="Make the default checkpoint (tasks without their own)")
    def make_default(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        self._make_default(request, queryset, None)

    @admin.action(description="Retire (no new jobs; history keeps it)")
    def retire(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        retired, was_default, tasks = [], False, set()
        for checkpoint in queryset.exclude(status=Checkpoint.Status.RETIRED):
            was_default = was_default or checkpoint.is_default
            tasks |= {d.task for d in checkpoint.task_defaults.all()}
            services.checkpoint_retire(checkpoint=checkpoint)
            retired.append(checkpoint.name)
        if not retired:
            self.message_user(request, "Nothing to retire: the chosen checkpoints are retired already.",
                              messages.WARNING)
            return
        self.message_user(request, f"Retired {', '.join(retired)}: no new jobs run on "
                                   f"{'it' if len(retired) == 1 else 'them'}; the history keeps earlier jobs.",
                          messages.SUCCESS)
        if was_default or tasks:
            self._warn_fallback(request, retired=retired, was_default=was_default, tasks=sorted(tasks))

    def _warn_fallback(self, request: HttpRequest, *, retired: list[str], was_default: bool, tasks: list[str]) -> None:
        """Name the checkpoint that jobs which named none run on now (Checkpoint.default's fallback)."""
        roles = (["the default checkpoint"] if was_default else []) + [f"the default for {task}" for task in tasks]
        fallback = Checkpoint.default()
        if fallback is None:
            self.message_user(request, f"{', '.join(retired)} was {' and '.join(roles)}, and no ready checkpoint is "
                                       "left: new jobs fail until one is ready.", messages.ERROR)
            return
        runs_on = {task.value: (Checkpoint.default(task.value) or fallback).name for task in WEB_TASKS}
        detail = "; ".join(f"{task} jobs on their own default, {name}" for task, name in runs_on.items()
                           if name != fallback.name)
        self.message_user(
            request,
            f"{', '.join(retired)} was {' and '.join(roles)}: jobs that name no checkpoint now run on {fallback.name}"
            + (f" ({detail})" if detail else "") + ". Make another checkpoint the default if that is not the one.",
            messages.WARNING,
        )
