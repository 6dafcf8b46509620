"""Thin views: validate with a form, call one service or selector, respond. Auth lives in the decorators."""
from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generation import chat, exports, health, limits, selectors, services, streams
from generation.forms import (
    ConversationEditForm,
    ConversationForm,
    ConversationMessageForm,
    JobForm,
    RatingForm,
    context_error_text,
)
from generation.models import Conversation, Job
from generation.rendering import render_output
from modelzoo.models import Checkpoint


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
            if source.task == Job.Task.CHAT:  # all its messages and its system prompt: as a conversation
                return redirect(f"{reverse('generation:conversation_new')}?from_job={source.pk}")
            if source.task not in Job.WEB_TASKS:
                messages.info(request, "A completion is repeated with Replay: the form cannot hold its raw prompt.")
                return redirect(source)
            initial = services.job_rerun_initial(job=source)
        form = JobForm(initial=initial)
    return render(request, "generation/job_form.html", {"form": form})


def _quota_message(exc: limits.QuotaExceeded) -> str:
    wait = getattr(exc, "retry_after_s", None)
    return f"{exc.message}." + (f" Try again in {wait} s." if wait else "")


def _history_filters(request: HttpRequest) -> dict[str, str]:
    """The history's filters and order from the query string (unknown values are ignored)."""
    task, status = request.GET.get("task", ""), request.GET.get("status", "")
    rating, confidence = request.GET.get("rating", ""), request.GET.get("confidence", "")
    sort = request.GET.get("sort", "")
    return {"task": task if task in Job.Task.values else "", "status": status if status in Job.Status.values else "",
            "q": request.GET.get("q", ""), "rating": rating if rating in selectors.RATING_FILTERS else "",
            "confidence": confidence if confidence in selectors.CONFIDENCE_FILTERS else "",
            "sort": sort if sort in selectors.HISTORY_SORTS else ""}


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    filters = _history_filters(request)
    jobs = selectors.job_list_for_user(user=request.user, **filters)
    page = Paginator(jobs, settings.JOBS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "generation/job_list.html",
        {
            "page": page,
            **filters,
            "filtered": any(value for name, value in filters.items() if name != "sort"),
            "query": query.urlencode(),
            "tasks": Job.Task.choices,
            "statuses": Job.Status.choices,
            "ratings": [(value, label) for value, (label, _) in selectors.RATING_FILTERS.items()],
            "confidences": [(value, label) for value, (label, _) in selectors.CONFIDENCE_FILTERS.items()],
            "sorts": [(value, label) for value, (label, _) in selectors.HISTORY_SORTS.items()],
            "sort_label": selectors.HISTORY_SORTS[filters["sort"]][0],
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
    return render(request, "generation/job_detail.html", {
        "job": job, "queue_position": position, "can_continue": selectors.job_can_continue(job=job),
        "rating_form": RatingForm(initial={"comment": job.rating_comment}), "server_now_ms": int(time.time() * 1000),
    })


@never_cache
@login_required
@require_GET
def job_json(request: HttpRequest, job_id: int) -> JsonResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    return JsonResponse(_job_state(job))


def _job_state(job: Job) -> dict:
    """The job's JSON, plus what its page shows: `output_html` is the whole answer rendered (for a continuation
    the answer it continues, then its own output), `can_continue` whether a Continue may extend it."""
    data = job.to_dict()
    data["output_html"] = render_output(job.full_output(), task=job.task, language=job.language())
    data["output_only_html"] = (render_output(job.output, task=job.task, language=job.language())
                                if job.answer_so_far() else data["output_html"])  # a conversation's turn
    data["queue_position"] = selectors.job_queue_position(job=job)
    data["can_continue"] = selectors.job_can_continue(job=job)
    data["server_time_ms"] = int(time.time() * 1000)
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
    await sync_to_async(streams.release_connection)()  # the request's own connection: not held while the stream is open
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
        streams.stream_close(user_id=user_id)


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
        elif kind == "lp":  # a token's log-probabilities, for the API (the page shows text only)
            continue
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
    return _back(request, job)


def _back(request: HttpRequest, default: Job | Conversation) -> HttpResponse:
    """To the page the form came from (its `next`, when it is one of ours), else to `default`."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect(default)


@login_required
@require_POST
def job_continue(request: HttpRequest, job_id: int) -> HttpResponse:
    """Extend an answer that stopped at the token limit (services.job_continue): a new job, shown after it."""
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    try:
        new = services.job_continue(job=job)
    except services.CannotContinue as exc:
        messages.error(request, str(exc))
        return redirect(job)
    except limits.ContextTooLong as exc:
        messages.error(request, f"The answer is too long to continue: {exc}.")
        return redirect(job)
    except limits.QuotaExceeded as exc:
        messages.error(request, _quota_message(exc))
        return redirect(job)
    if new.status == Job.Status.FAILED:
        messages.error(request, new.error)
    if new.conversation_id and request.POST.get("next"):
        return redirect(f"{new.conversation.get_absolute_url()}#turn-{new.pk}")
    return redirect(new)


@login_required
@require_POST
def job_rate(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    form = RatingForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose thumbs up or down.")
        return _back(request, job)
    services.job_rate(job=job, rating=form.rating_value(), comment=form.cleaned_data["comment"])
    messages.success(request, "Thanks: rating saved." if form.rating_value() is not None else "Rating cleared.")
    return _back(request, job)


# --- conversations -------------------------------------------------------------------------------------------


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.conversation_list_for_user(user=request.user), settings.JOBS_PER_PAGE).get_page(
        request.GET.get("page"))
    return render(request, "generation/conversation_list.html", {"page": page})


@login_required
@require_http_methods(["GET", "POST"])
def conversation_new(request: HttpRequest) -> HttpResponse:
    """A new conversation; `?from_job=<id>` opens one of the user's chat jobs as a conversation that repeats it
    (its system prompt, earlier messages and last message), which is how such a job is rerun."""
    source_id = request.POST.get("from_job") or request.GET.get("from_job") or ""
    source = None
    if source_id:
        if not source_id.isdigit():
            raise Http404("No such job")
        source = selectors.job_get_for_user(user=request.user, job_id=int(source_id))
        if source.task != Job.Task.CHAT:
            raise Http404("Not a chat job")
    rerun = services.conversation_rerun_initial(job=source) if source else None
    if request.method == "POST":
        form = ConversationForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                conversation, job = services.conversation_start(
                    owner=request.user, message=data["message"], system_prompt=data["system_prompt"],
                    title=data["title"], preset=data["preset"], checkpoint=data["checkpoint"],
                    preamble=rerun["preamble"] if rerun else None, max_tokens=data["max_tokens"],
                    temperature=data["temperature"])
            except (services.NoCheckpoint, limits.QuotaExceeded, limits.ContextTooLong) as exc:
                status = _add_turn_error(form, exc, checkpoint=data["checkpoint"])
                return render(request, "generation/conversation_form.html",
                              _new_context(form, rerun, source), status=status)
            if job.status == Job.Status.FAILED:
                messages.error(request, job.error)
            return redirect(conversation)
    else:
        initial = {key: value for key, value in (rerun or {}).items() if key != "preamble"}
        form = ConversationForm(initial={**initial, "from_job": source.pk} if source else None)
    return render(request, "generation/conversation_form.html", _new_context(form, rerun, source))


def _new_context(form: ConversationForm, rerun: dict | None, source: Job | None) -> dict:
    return {"form": form, "preamble": rerun["preamble"] if rerun else [], "source": source,
            "presets": {key: preset.system_prompt for key, preset in chat.PRESETS.items()}}


def _add_turn_error(form: ConversationMessageForm, exc: Exception, *, checkpoint: Checkpoint | None = None) -> int:
    """Put a conversation service's refusal next to the field it concerns; the response status to use."""
    if isinstance(exc, limits.ContextTooLong):
        checkpoint = checkpoint or Checkpoint.default(task=Job.Task.CHAT)
        field = "message" if exc.prompt_too_long else "max_tokens"
        form.add_error(field, context_error_text(exc, checkpoint=checkpoint))
        return 400
    if isinstance(exc, limits.QuotaExceeded):
        form.add_error(None, _quota_message(exc))
        return exc.status
    if isinstance(exc, services.ConversationBusy):
        form.add_error(None, str(exc))
        return 409
    form.add_error(None, str(exc))
    return 503


def _conversation_page(request: HttpRequest, conversation: Conversation, *, form: ConversationMessageForm | None = None,
                       status: int = 200) -> HttpResponse:
    turns = selectors.conversation_turns(conversation=conversation)
    newest = turns[-1] if turns else None
    return render(request, "generation/conversation_detail.html", {
        "conversation": conversation,
        "turns": turns,
        "newest": newest,
        "busy": bool(newest and not newest.is_finished),
        "can_continue": bool(newest and selectors.job_can_continue(job=newest)),
        "form": form or ConversationMessageForm(),
        "edit_form": ConversationEditForm(initial={"title": conversation.title,
                                                   "system_prompt": conversation.system_prompt}),
        "queue_position": selectors.job_queue_position(job=newest) if newest else None,
        "server_now_ms": int(time.time() * 1000),
    }, status=status)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    return _conversation_page(request, conversation)


@login_required
@require_POST
def conversation_message(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """The next turn: the thread so far (trimmed to fit, oldest first) and this message, as a new chat job."""
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    form = ConversationMessageForm(request.POST)
    if not form.is_valid():
        return _conversation_page(request, conversation, form=form, status=400)
    data = form.cleaned_data
    try:
        job = services.conversation_turn_submit(conversation=conversation, message=data["message"],
                                                max_tokens=data["max_tokens"], temperature=data["temperature"])
    except (services.ConversationBusy, services.NoCheckpoint, limits.QuotaExceeded, limits.ContextTooLong) as exc:
        status = _add_turn_error(form, exc, checkpoint=conversation.checkpoint)
        return _conversation_page(request, conversation, form=form, status=status)
    if job.status == Job.Status.FAILED:
        messages.error(request, job.error)
    return redirect(f"{conversation.get_absolute_url()}#turn-{job.pk}")


@login_required
@require_POST
def conversation_edit(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    form = ConversationEditForm(request.POST)
    if form.is_valid():
        services.conversation_update(conversation=conversation, title=form.cleaned_data["title"],
                                     system_prompt=form.cleaned_data["system_prompt"])
        messages.success(request, "Saved: the next message uses this system prompt.")
    else:
        messages.error(request, "; ".join(error for errors in form.errors.values() for error in errors))
    return redirect(conversation)


@login_required
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    services.conversation_delete(conversation=conversation)
    messages.success(request, "Conversation deleted; its answers stay in your history.")
    return redirect("generation:conversation_list")


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    ok, report = health.health()
    return JsonResponse(report, status=200 if ok else 503)
