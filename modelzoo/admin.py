from django.contrib import admin

from .models import Checkpoint


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "is_default", "format", "quantization", "context_length", "parameter_count", "created")
    list_filter = ("status", "format", "is_default")
    search_fields = ("name", "notes", "sha256")
    readonly_fields = ("created",)
