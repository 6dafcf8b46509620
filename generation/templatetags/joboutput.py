from django import template
from django.utils.safestring import SafeString

from generation.models import Job
from generation.rendering import render_output

register = template.Library()


@register.filter
def job_output(job: Job) -> SafeString:
    """{{ job|job_output }}: the job's output as escaped, highlighted HTML."""
    return render_output(job.output, task=job.task, language=job.language())


@register.filter
def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


@register.filter
def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
