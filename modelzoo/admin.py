from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from modelzoo import services
from modelzoo.models import WEB_TASKS, Checkpoint, Task
from modelzoo.pickles import pickle_refusal


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


def _make_default_for(task: Task):
    """The admin action "Make the default for <task>", named make_default_for_<task>."""

    @admin.action(description=f"Make the default for {task.label.lower()}")
    def action(modeladmin: CheckpointAdmin, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        modeladmin._make_default(request, queryset, task.value)

    action.__name__ = f"make_default_for_{task.value}"
    return action


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "is_default", "default_for", "format", "base", "architecture", "quantization", "context_length",
                    "parameter_count", "uploaded_by", "created")
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
                "context_length", "parameter_count", "sha256", "size", "uploaded_by", "created")

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
        self.message_user(request, f"{obj.name} uploaded; it is being validated (refresh to see its status).")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Checkpoint]:
        return super().get_queryset(request).prefetch_related("task_defaults")

    @admin.display(description="Default for")
    def default_for(self, obj: Checkpoint) -> str:
        return ", ".join(sorted(d.task for d in obj.task_defaults.all())) or "–"

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
        self.message_user(request, f"{checkpoint.name} is now the default for {task + ' jobs' if task else 'every task without its own'}.")

    @admin.action(description="Make the default checkpoint (tasks without their own)")
    def make_default(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        self._make_default(request, queryset, None)

    @admin.action(description="Retire (no new jobs; history keeps it)")
    def retire(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        for checkpoint in queryset:
            services.checkpoint_retire(checkpoint=checkpoint)
