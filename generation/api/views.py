"""The OpenAI-compatible API under /v1/: models, completions and chat completions, Bearer API keys per user.

Every request becomes Jobs (one per choice, `n`) in the caller's history (task chat/completion, source api)
that go through the same Celery queue as the site's; the views then follow the jobs' Redis token streams,
so `stream: true` and plain responses read the same thing the job page does. Errors have OpenAI's shape:
{"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone

from generation import limits, services, streams
from generation.api.errors import ApiError, api_view
from generation.api.parsing import GenerationRequest, parse_request
from generation.api.replies import FINISH_REASONS, Reply
from generation.models import Job
from modelzoo.models import Checkpoint


def create_jobs(*, user: Any, request: GenerationRequest) -> list[Job]:
    try:
        limits.check_quotas(user=user, n=request.n, source=Job.Source.API)
    except limits.QuotaExceeded as exc:
        raise ApiError(exc.status, exc.message, type="requests" if exc.status == 429 else "server_error",
                       code=exc.code) from None
    jobs = []
    for i in range(request.n):
        jobs.append(services.job_create(
            owner=user, task=request.task, prompt=request.prompt, options=request.options,
            checkpoint=request.checkpoint, temperature=request.temperature, top_p=request.top_p,
            max_tokens=request.max_tokens, seed=None if request.seed is None else (request.seed + i) % (int(limits.SEED.high) + 1),
            prompt_tokens=request.prompt_tokens, source=Job.Source.API,
        ))
    failed = [job for job in jobs if job.status == Job.Status.FAILED]
    if failed:
        raise ApiError(503, failed[0].error, type="server_error", code="queue_unavailable")
    return jobs


# --- views ---------------------------------------------------------------------------------------------------


@api_view(("GET",))
async def models(request: HttpRequest) -> JsonResponse:
    rows = await sync_to_async(lambda: list(Checkpoint.objects.ready().order_by("name")))()
    data = [{"id": c.name, "object": "model", "created": int(c.created.timestamp()), "owned_by": "llmsite"}
            for c in rows]
    return JsonResponse({"object": "list", "data": data})


@api_view(("POST",))
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await _generate(request, task=Job.Task.CHAT)


@api_view(("POST",))
async def completions(request: HttpRequest) -> HttpResponse:
    return await _generate(request, task=Job.Task.COMPLETION)


async def _generate(request: HttpRequest, *, task: str) -> HttpResponse:
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        raise ApiError(400, "The request body is not valid JSON", code="invalid_json") from None
    parsed = await sync_to_async(parse_request)(body, task=task)
    jobs = await sync_to_async(create_jobs)(user=request.api_user, request=parsed)
    ids = [job.pk for job in jobs]
    reply = Reply(task=task, model=parsed.checkpoint.name, job_ids=ids, created=int(time.time()))
    if parsed.stream:
        response = StreamingHttpResponse(_stream(reply, include_usage=parsed.include_usage),
                                         content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        try:
            async for _ in _follow(ids):
                pass
        except asyncio.CancelledError:  # the client went away: nobody will read these jobs' answers
            await sync_to_async(services.jobs_cancel_unfinished)(job_ids=ids)
            raise
        finished = await sync_to_async(_jobs)(ids)
        failed = [job for job in finished if job.status == Job.Status.FAILED]
        if failed:
            raise ApiError(500, f"Generation failed: {failed[0].error}", type="server_error", code="job_failed")
        response = JsonResponse(reply.body(finished))
    response["X-Job-Ids"] = ",".join(map(str, ids))
    return response


def _jobs(ids: list[int]) -> list[Job]:
    by_id = Job.objects.in_bulk(ids)
    return [by_id[i] for i in ids]


async def _follow(ids: list[int]) -> AsyncIterator[tuple[int, str, Any]]:
    """(job_id, kind, value) of the jobs' streams until every job has ended ("start", "t", "end")."""
    open_ids = set(ids)
    async for job_id, _, kind, value in streams.read_events(job_ids=ids):
        if kind == "idle":
            # A job that ended without an end entry (its worker died for good, the stream expired...).
            done = await sync_to_async(lambda: set(Job.objects.filter(
                pk__in=open_ids, status__in=Job.FINISHED_STATUSES,
                finished_at__lt=timezone.now() - timedelta(seconds=streams.STREAM_END_GRACE_S)).values_list("pk", flat=True)))()
            for job_id in done:
                open_ids.discard(job_id)
                yield job_id, "end", None
            if not open_ids:
                return
            continue
        if kind == "end":
            open_ids.discard(job_id)
        yield job_id, kind, value
        if not open_ids:
            return


def _data(payload: Any) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _stream(reply: Reply, *, include_usage: bool) -> AsyncIterator[bytes]:
    index = {job_id: i for i, job_id in enumerate(reply.job_ids)}
    done = False
    try:
        if reply.chat:
            for i in range(len(reply.job_ids)):
                yield _data(reply.chunk(i, role=True, text=""))
        async for job_id, kind, value in _follow(reply.job_ids):
            if kind == "t":
                yield _data(reply.chunk(index[job_id], text=value))
            elif kind == "end":
                job = await sync_to_async(Job.objects.get)(pk=job_id)
                if job.status == Job.Status.FAILED:
                    yield _data({"error": {"message": f"Generation failed: {job.error}", "type": "server_error",
                                           "param": None, "code": "job_failed"}})
                    done = True
                    await sync_to_async(services.jobs_cancel_unfinished)(job_ids=reply.job_ids)
                    return
                reason = FINISH_REASONS.get(job.finish_reason, "stop")
                yield _data(reply.chunk(index[job_id], finish_reason=reason))
        if include_usage:
            jobs = await sync_to_async(_jobs)(reply.job_ids)
            yield _data({**reply.chunk(0), "choices": [], "usage": reply.usage(jobs)})
        done = True
        yield b"data: [DONE]\n\n"
    finally:
        if not done:  # the client disconnected mid-stream (CancelledError / aclose): stop its jobs
            await sync_to_async(services.jobs_cancel_unfinished)(job_ids=reply.job_ids)
