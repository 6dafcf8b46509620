"""Thin views: validate with a form, call one service or selector, respond. Auth lives in the decorators."""
from __future__ import annotations

import re
import time
from typing import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generation import exports, health, limits, selectors, services, streams
from generation.forms import JobForm
from generation.models import Job
from generation.rendering import render_output


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Signed-in users go to the new-job form; visitors get the landing page, which says what the site does."""
    if request.user.is_authenticated:
        return redirect("generation:job_new")
    return render(request, "landing.html", {"models": selectors.api_model_ids()})


@login_required
@require_http_methods(["GET", "POST"])
def job_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = JobForm(request.POST)
        if form.is_valid():
            try:
                [job] = services.jobs_submit(owner=request.user, inputs=[form.job_kwargs()])
            except limits.QuotaExceeded as exc:
                form.add_error(None, _quota_message(exc))
                return render(request, "generation/job_form.html", {"form": form}, status=exc.status)
            if job.status == Job.Status.FAILED:
                messages.error(request, job.error)
            return redirect(job)
    else:
        initial = {}
        if rerun_id := request.GET.get("rerun"):
            if not rerun_id.isdigit():
                raise Http404("No such job")
            source = selectors.job_get_for_user(user=request.user, job_id=int(rerun_id))
            initial = services.job_rerun_initial(job=source)
        form = JobForm(initial=initial)
    return render(request, "generation/job_form.html", {"form": form})


def _quota_message(exc: limits.QuotaExceeded) -> str:
    wait = getattr(exc, "retry_after_s", None)
    return f"{exc.message}." + (f" Try again in {wait} s." if wait else "")


def _history_filters(request: HttpRequest) -> dict[str, str]:
    """The history's filters from the query string (unknown task or status values are ignored)."""
    task, status = request.GET.get("task", ""), request.GET.get("status", "")
    return {"task": task if task in Job.Task.values else "", "status": status if status in Job.Status.values else "",
            "q": request.GET.get("q", "")}


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    task = request.GET.get("task", "")
    status = request.GET.get("status", "")
    q = request.GET.get("q", "")
    jobs = selectors.job_list_for_user(user=request.user, **_history_filters(request))
    page = Paginator(jobs, settings.JOBS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "generation/job_list.html",
        {
            "page": page,
            "task": task,
            "status": status,
            "q": q,
            "query": query.urlencode(),
            "tasks": Job.Task.choices,
            "statuses": Job.Status.choices,
        },
    )


@login_required
@require_GET
def job_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """The filtered history (every page of it) as a download: JSON, CSV or Markdown (fmt: json, csv, md)."""
    if fmt not in exports.FORMATS:
        raise Http404("No such export format")
    filters = _history_filters(request)
    jobs = selectors.job_list_for_user(user=request.user, **filters)
    return exports.download(jobs, fmt=fmt, filters=filters)


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    position = selectors.job_queue_position(job=job)
    return render(request, "generation/job_detail.html", {"job": job, "queue_position": position})


@never_cache
@login_required
@require_GET
def job_json(request: HttpRequest, job_id: int) -> JsonResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    return JsonResponse(_job_state(job))


def _job_state(job: Job) -> dict:
    data = job.to_dict()
    data["output_html"] = render_output(job.output, task=job.task, language=job.language())
    data["queue_position"] = selectors.job_queue_position(job=job)
    return data


_EVENT_ID = re.compile(r"^\d+-\d+$")


@never_cache
@login_required
@require_GET
async def job_stream(request: HttpRequest, job_id: int) -> StreamingHttpResponse:
    """Server-sent events of one job: its tokens from the start (or after Last-Event-ID) as they come, the
    queue position while it waits, and at the end the stored job (the same JSON as /jobs/<id>.json)."""
    user = await request.auser()
    job = await sync_to_async(selectors.job_get_for_user)(user=user, job_id=job_id)
    await sync_to_async(lambda: connection.close())()  # the request's own connection: not held while the stream is open
    if not await streams.stream_open(user_id=user.pk):
        response = HttpResponse(f"Too many open streams: at most {settings.STREAMS_PER_USER} per user. Close some "
                                "job pages and try again.", status=429, content_type="text/plain")
        response["Retry-After"] = "5"
        return response
    last_id = request.headers.get("Last-Event-ID", "")
    response = StreamingHttpResponse(
        _job_events(job_id=job.pk, user_id=user.pk, last_id=last_id if _EVENT_ID.match(last_id) else "0"),
        content_type="text/event-stream",
    )
    response["X-Accel-Buffering"] = "no"  # proxies: do not buffer the stream
    return response


def _job_state_now(job_id: int) -> dict:
    return _job_state(Job.objects.select_related("checkpoint").get(pk=job_id))


async def _job_events(*, job_id: int, user_id: int, last_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in _job_events_counted(job_id=job_id, last_id=last_id):
            yield chunk
    finally:
        await streams.stream_close(user_id=user_id)


async def _job_events_counted(*, job_id: int, last_id: str) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    state = await streams.db_read(_job_state_now, job_id=job_id)
    if state["queue_position"] is not None:
        yield streams.sse(event="queued", data={"position": state["queue_position"]})
    async for _, entry_id, kind, value in streams.read_events(job_ids=[job_id], last_id=last_id):
        if kind == "t":
            yield streams.sse(event="token", data={"text": value}, id=entry_id)
        elif kind == "start":
            yield streams.sse(event="start", data={"attempt": int(value)}, id=entry_id)
        elif kind == "end":
            yield streams.sse(event="end", data=await streams.db_read(_job_state_now, job_id=job_id), id=entry_id)
            return
        else:  # idle: nothing new for a while
            try:
                state = await streams.db_read(_job_state_now, job_id=job_id)
            except Job.DoesNotExist:
                return
            if state["queue_position"] is not None:
                yield streams.sse(event="queued", data={"position": state["queue_position"]})
            elif state["is_finished"] and _finished_for(state) > streams.STREAM_END_GRACE_S:
                # No end entry is coming (its stream expired, or the job ended without a worker).
                yield streams.sse(event="end", data=state)
                return
            else:
                yield b": keep-alive\n\n"


def _finished_for(state: dict) -> float:
    from datetime import datetime

    if not state["finished_at"]:
        return float("inf")
    return time.time() - datetime.fromisoformat(state["finished_at"]).timestamp()


@login_required
@require_http_methods(["GET", "POST"])
def job_delete(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if request.method == "POST":
        services.job_delete(job=job)
        messages.success(request, f"Job {job_id} deleted.")
        return redirect(_history_url(request))
    return render(request, "generation/job_confirm_delete.html", {"job": job})


def _history_url(request: HttpRequest) -> str:
    """Where a delete returns to: the history page it came from (its filters and page, from the form's `next`),
    else the history."""
    history = reverse("generation:job_list")
    wanted = request.POST.get("next", "")
    return wanted if wanted == history or wanted.startswith(history + "?") else history


@login_required
@require_POST
def job_replay(request: HttpRequest, job_id: int) -> HttpResponse:
    """Run the same input again as a new job (API jobs' chat messages and raw prompts included)."""
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    try:
        new = services.job_replay(job=job)
    except limits.QuotaExceeded as exc:
        messages.error(request, _quota_message(exc))
        return redirect(job)
    if new.status == Job.Status.FAILED:
        messages.error(request, new.error)
    return redirect(new)


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if services.job_cancel(job=job):
        messages.success(request, f"Job {job_id} stopped.")
    return redirect(job)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    ok, report = health.health()
    return JsonResponse(report, status=200 if ok else 503)
