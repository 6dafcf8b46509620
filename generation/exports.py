"""The history as a download: the jobs a filter selects (every page of them) as JSON, CSV or Markdown.

JSON holds each job exactly as /jobs/<id>.json does (Job.to_dict, with its tokens' log-probabilities and their
mean); CSV flattens it to one row per job (the mean, not the tokens);
Markdown is for reading and pasting: one section per job, prompt and output in fenced blocks that are longer
than any backtick run inside them, so a code job's own fences stay literal.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils import timezone

from generation.models import Job

#: CSV columns, in order: Job.to_dict keys, its sampling params flattened beside them.
CSV_COLUMNS = (
    "id", "created_at", "task", "source", "status", "checkpoint", "prompt", "context", "output", "error",
    "finish_reason", "prompt_tokens", "completion_tokens", "temperature", "top_p", "top_k", "max_tokens", "seed",
    "repetition_penalty", "ttft_s", "tokens_per_s", "mean_logprob", "confidence", "started_at", "first_token_at",
    "finished_at",
)
#: A spreadsheet runs a cell that starts with one of these as a formula; such text cells get a leading "'".
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _jobs(jobs: QuerySet[Job]) -> Iterable[Job]:
    return jobs.iterator(chunk_size=500)


def _header(filters: dict[str, str]) -> dict[str, Any]:
    return {"exported_at": timezone.now().isoformat(), "filters": {k: v for k, v in filters.items() if v}}


def as_json(jobs: QuerySet[Job], *, filters: dict[str, str]) -> str:
    rows = [job.to_dict() for job in _jobs(jobs)]
    return json.dumps({**_header(filters), "count": len(rows), "jobs": rows}, ensure_ascii=False, indent=2) + "\n"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def as_csv(jobs: QuerySet[Job], *, filters: dict[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for job in _jobs(jobs):
        row = job.to_dict()
        row.update(row.pop("params"))
        writer.writerow([_csv_cell(row[column]) for column in CSV_COLUMNS])
    return out.getvalue()


def _fenced(text: str, info: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def token_parts(job: Job) -> list[str]:
    """["82 prompt", "31 answer"]: the job's token counts known so far, as the history shows them."""
    return [f"{n} {label}" for n, label in ((job.prompt_tokens, "prompt"), (job.completion_tokens, "answer"))
            if n is not None]


def confidence_text(job: Job) -> str:
    """"83% mean token probability": how sure the model was of the job's answer, as the history shows it."""
    return f"{job.confidence():.0%} mean token probability"


def as_markdown(jobs: QuerySet[Job], *, filters: dict[str, str]) -> str:
    header = _header(filters)
    chosen = ", ".join(f"{key}: {value}" for key, value in header["filters"].items()) or "none"
    sections = []
    for job in _jobs(jobs):
        lines = [
            f"## Job {job.pk} · {job.get_task_display()} · {job.get_status_display()}",
            "",
            f"- Created: {job.created_at.isoformat()}",
            f"- Model: {job.checkpoint.name}",
            f"- Tokens: {' · '.join(token_parts(job)) or '–'}",
            *([f"- Confidence: {confidence_text(job)}"] if job.mean_logprob is not None else []),
            "",
            "### Prompt",
            "",
            _fenced(job.prompt, "text"),
        ]
        if job.context:
            lines += ["", "### Context", "", _fenced(job.context, "text")]
        if job.output:
            lines += ["", "### Output", "", _fenced(job.output, "text")]
        if job.error:
            lines += ["", "### Error", "", _fenced(job.error, "text")]
        sections.append("\n".join(lines))
    count = f"{len(sections)} job{'s' * (len(sections) != 1)}"
    intro = f"# llmsite history\n\nExported {header['exported_at']}; {count}; filters: {chosen}."
    return "\n\n".join([intro, *sections]) + "\n"


#: fmt -> (writer, content type, file extension)
FORMATS: dict[str, tuple[Callable[..., str], str, str]] = {
    "json": (as_json, "application/json", "json"),
    "csv": (as_csv, "text/csv; charset=utf-8", "csv"),
    "md": (as_markdown, "text/markdown; charset=utf-8", "md"),
}


def download(jobs: QuerySet[Job], *, fmt: str, filters: dict[str, str]) -> HttpResponse:
    """An attachment of `jobs` in `fmt` (a key of FORMATS), named after the moment of the export."""
    write, content_type, extension = FORMATS[fmt]
    response = HttpResponse(write(jobs, filters=filters), content_type=content_type)
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="llmsite-history-{stamp}.{extension}"'
    return response
