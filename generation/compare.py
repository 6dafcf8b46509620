"""Compare: one prompt run as two jobs (two checkpoints, or one checkpoint with two settings), shown side by side.

Each answer is an ordinary job: queued through services.jobs_submit (the quotas and the admission lock count
both, and admit both or neither), streamed on the page by the job page's own script (job.js follows every
[data-job] root), stoppable, and kept in the history. Nothing is stored about the pair itself: the compare page
is /compare/?a=<job id>&b=<job id>, any two of the user's own jobs."""
from __future__ import annotations

import time
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods

from generation import chat, limits, prompts, selectors, services
from generation.forms import COMPARE_SIDES, COMPARE_TASKS, CompareForm
from generation.models import Job

FORM_TEMPLATE = "generation/compare_form.html"


def compare_url(a: Job, b: Job) -> str:
    return f"{reverse('generation:compare_detail')}?{urlencode({'a': a.pk, 'b': b.pk})}"


@login_required
@require_http_methods(["GET", "POST"])
def compare_new(request: HttpRequest) -> HttpResponse:
    """The compare form; `?from=<job id>` fills it with one of the user's jobs (its input, and its settings in
    both columns, for the user to change one)."""
    if request.method == "POST":
        form = CompareForm(request.POST)
        if form.is_valid():
            try:
                a, b = services.jobs_submit(owner=request.user, inputs=form.jobs_kwargs())
            except limits.QuotaExceeded as exc:
                form.add_error(None, refusal_text(user=request.user, exc=exc))
                return render(request, FORM_TEMPLATE, {"form": form}, status=exc.status)
            for side, job in zip(COMPARE_SIDES, (a, b), strict=True):
                if job.status == Job.Status.FAILED:
                    messages.error(request, f"{side.upper()}: {job.error}")
            return redirect(compare_url(a, b))
        return render(request, FORM_TEMPLATE, {"form": form})
    initial: dict[str, Any] = {}
    if source_id := request.GET.get("from"):
        if not source_id.isdigit():
            raise Http404("No such job")
        source = selectors.job_get_for_user(user=request.user, job_id=int(source_id))
        if source.task not in dict(COMPARE_TASKS):
            messages.info(request, "A completion's raw prompt cannot be compared; Replay repeats it.")
            return redirect(source)
        initial = initial_from_job(request, job=source)
    return render(request, FORM_TEMPLATE, {"form": CompareForm(initial=initial)})


def initial_from_job(request: HttpRequest, *, job: Job) -> dict[str, Any]:
    """The compare form filled from `job`: its input, and its checkpoint (while ready) and settings in both
    columns. A chat job gives its system prompt and last message; earlier messages are left out, and said so."""
    initial: dict[str, Any] = {
        "task": job.task, "prompt": job.prompt, "context": job.context, "seed": job.seed,
        "language": job.options.get("language", prompts.DEFAULT_LANGUAGE),
        "length": job.options.get("length", prompts.DEFAULT_LENGTH),
    }
    if job.task == Job.Task.CHAT:
        system, earlier, message = chat.split_chat_job(job.chat_messages() or [{"role": "user", "content": job.prompt}])
        initial.update(system_prompt=system, prompt=message or job.prompt)
        if earlier:
            messages.info(request, f"Compare sends one message: the {len(earlier)} earlier message"
                                   f"{'s' if len(earlier) != 1 else ''} of job {job.pk} are left out.")
    for side in COMPARE_SIDES:
        initial.update({f"checkpoint_{side}": job.checkpoint.pk if job.checkpoint.is_ready else None,
                        f"temperature_{side}": job.temperature, f"max_tokens_{side}": job.max_tokens})
    return initial


def refusal_text(*, user: Any, exc: limits.QuotaExceeded) -> str:
    """Why neither job of a comparison was queued (jobs_submit admits both or neither), and when to try again."""
    try:
        limits.check_quotas(user=user, n=1)
    except limits.QuotaExceeded:
        why = exc.message[:1].lower() + exc.message[1:]
    else:
        why = f"a comparison runs two jobs, and there is room for only one more right now ({exc.message})"
    wait = f" Try again in {exc.retry_after_s} s." if exc.retry_after_s else ""
    return f"Neither job was queued: {why}.{wait}"


@login_required
@require_GET
def compare_detail(request: HttpRequest) -> HttpResponse:
    """Two of the user's jobs side by side (?a=<id>&b=<id>), each followed live like the job page; 404 for a
    job of anybody else, as for one that does not exist."""
    ids = [request.GET.get(side, "") for side in COMPARE_SIDES]
    if not all(value.isdigit() for value in ids):
        raise Http404("Compare needs two jobs: ?a=<id>&b=<id>")
    jobs = [selectors.job_get_for_user(user=request.user, job_id=int(value)) for value in ids]
    return render(request, "generation/compare_detail.html", {
        "columns": [{"side": side.upper(), "key": side, "job": job, "settings": _settings(job, other=other),
                     "queue_position": selectors.job_queue_position(job=job)}
                    for side, job, other in zip(COMPARE_SIDES, jobs, jobs[::-1], strict=True)],
        "shared": jobs[0] if _input_of(jobs[0]) == _input_of(jobs[1]) else None,
        "here": request.get_full_path(),
        "server_now_ms": int(time.time() * 1000),
    })


#: The sampling settings a column shows, as (label, Job field).
SETTINGS = (("temperature", "temperature"), ("max tokens", "max_tokens"), ("top-p", "top_p"), ("top-k", "top_k"),
            ("repetition penalty", "repetition_penalty"), ("seed", "seed"))


def _settings(job: Job, *, other: Job) -> list[dict[str, Any]]:
    """The job's settings, each marked when it differs from the other column's (what the comparison varies)."""
    return [{"label": label, "value": "random" if getattr(job, name) is None else getattr(job, name),
             "differs": getattr(job, name) != getattr(other, name)}
            for label, name in SETTINGS if getattr(job, name) is not None or getattr(other, name) is not None]


def _input_of(job: Job) -> tuple:
    """What the model was asked, settings aside: equal for the two jobs of one comparison."""
    return job.task, job.prompt, job.context, job.language(), job.length(), job.chat_messages()
