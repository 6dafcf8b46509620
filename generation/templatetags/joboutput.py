from django import template
from django.utils.safestring import SafeString

from generation.models import Job
from generation.rendering import render_output

register = template.Library()


@register.filter
def job_output(job: Job) -> SafeString:
    """{{ job|job_output }}: the job's whole answer (for a continuation, the answer it continues first) as
    sanitized, highlighted HTML."""
    return render_output(job.full_output(), task=job.task, language=job.language())


@register.filter
def job_output_own(job: Job) -> SafeString:
    """{{ job|job_output_own }}: only the text this job generated (a conversation shows each turn's own part)."""
    return render_output(job.output, task=job.task, language=job.language())


@register.filter
def task_label(job: Job) -> str:
    """The task as a person reads it: a chat job from the site is a conversation's turn, not an API call."""
    if job.task == Job.Task.CHAT and job.source == Job.Source.WEB:
        return "Chat"
    return job.get_task_display()


@register.filter
def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


@register.filter
def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
