from django.contrib import admin
from django.utils.text import Truncator

from .models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "task", "short_prompt", "status", "checkpoint", "prompt_tokens", "completion_tokens", "attempts", "created_at")
    list_filter = ("status", "task", "checkpoint")
    search_fields = ("prompt", "output", "error", "owner__username")
    list_select_related = ("owner", "checkpoint")
    raw_id_fields = ("owner",)
    date_hierarchy = "created_at"
    readonly_fields = ("created_at", "started_at", "first_token_at", "finished_at", "attempts")

    @admin.display(description="prompt")
    def short_prompt(self, job: Job) -> str:
        return Truncator(job.prompt).chars(60)
