"""Filters of the history list and the job page: readable token counts, a one-line preview of what a job
produced, a probability in percent."""
from __future__ import annotations

import re

from django import template

from generation import exports
from generation.models import Job

register = template.Library()

PREVIEW_CHARS = 140


@register.filter
def token_parts(job: Job) -> list[str]:
    """["82 prompt", "31 answer"]: the counts known so far (the list shows them joined by " · ")."""
    return exports.token_parts(job)


@register.filter
def output_preview(job: Job) -> str:
    """The start of the output (or of the error of a failed job) on one line, whitespace collapsed."""
    text = job.error if job.status == Job.Status.FAILED and job.error else job.output
    text = re.sub(r"\s+", " ", text.replace("```", " ")).strip()
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1].rstrip() + "…"


@register.filter
def percent(value: float | None) -> str:
    """0.834 -> "83%" (a probability as the pages show it); None -> "" ."""
    return "" if value is None else f"{value:.0%}"
