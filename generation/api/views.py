"""The OpenAI-compatible API under /v1/: models, completions and chat completions, Bearer API keys per user.

Every request becomes Jobs (one per choice, `n`) in the caller's history (task chat/completion, source api)
that go through the same Celery queue as the site's; the views then follow the jobs' Redis token streams,
so `stream: true` and plain responses read the same thing the job page does. A request with an
`Idempotency-Key` it sent before gets the jobs of the first one again (generation.api.idempotency).

Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and are always JSON
(generation.api.errors): 400/404/413/415/422 for the request, 409 for an Idempotency-Key in use, 429 for a
quota and 503 when no worker or no Redis can serve it (both with Retry-After), 502 for a job that failed and
504 for one that ran out of time (both with `x-should-retry: false`: running it again would fail again, and
the official client retries 5xx otherwise), 500 with an error id for a bug. Any error after the jobs exist
names them and is not to be retried either, unless an Idempotency-Key makes the retry safe
(errors.after_jobs). A stream that has started ends with an error chunk instead.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone

from generation import limits, services, streams
from generation.api import idempotency
from generation.api.errors import REDIS_DOWN, REDIS_RETRY_AFTER_S, ApiError, api_view, internal_error, redis_unavailable
from generation.api.parsing import GenerationRequest, parse_request, read_json
from generation.api.replies import FINISH_REASONS, Reply
from generation.models import Job
from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)


def create_jobs(*, user: Any, request: GenerationRequest) -> list[Job]:
    inputs = [{
        "task": request.task, "prompt": request.prompt, "options": request.options, "checkpoint": request.checkpoint,
        "temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens,
        "seed": None if request.seed is None else (request.seed + i) % (int(limits.SEED.high) + 1),
        "prompt_tokens": request.prompt_tokens,
    } for i in range(request.n)]
    try:
        jobs = services.jobs_submit(owner=user, source=Job.Source.API, inputs=inputs, require_worker=True)
    except limits.QuotaExceeded as exc:
        raise ApiError(exc.status, exc.message, type="requests" if exc.status == 429 else "server_error",
                       code=exc.code, retry_after_s=exc.retry_after_s) from None
    failed = [job for job in jobs if job.status == Job.Status.FAILED]
    if failed:
        raise ApiError(503, failed[0].error, type="server_error", code="queue_unavailable",
                       retry_after_s=REDIS_RETRY_AFTER_S)
    return jobs


def job_failed_error(job: Job, **kwargs: Any) -> ApiError:
    """The answer for a job that ended `failed`: 504 when it ran out of time, else 502 (the worker side
    failed), never 500, and `x-should-retry: false`, because running the same job again fails the same way
    and each retry of the official client would make one more job."""
    timed_out = job.finish_reason == "timeout"
    return ApiError(504 if timed_out else 502, f"Generation failed: {job.error}", type="server_error",
                    code="job_failed", should_retry=False, **kwargs)


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
    body = read_json(request.body)
    key = idempotency.request_key(request)
    parsed = await sync_to_async(parse_request)(body, task=task)
    user = request.api_user
    if not await streams.stream_open(user_id=user.pk):  # a waiting answer follows a stream as much as a streamed one
        raise ApiError(429, f"Too many open requests: at most {settings.STREAMS_PER_USER} per user",
                       type="requests", code="rate_limit_exceeded", retry_after_s=5)
    try:
        response = await _answer(request, task=task, body=body, key=key, parsed=parsed)
    except BaseException:
        streams.stream_close(user_id=user.pk)
        raise
    if not isinstance(response, StreamingHttpResponse):  # a streamed answer closes its slot when it ends
        streams.stream_close(user_id=user.pk)
    return response


async def _answer(request: HttpRequest, *, task: str, body: Any, key: str | None, parsed: Any) -> HttpResponse:
    user = request.api_user
    replayed = False
    if key is None:
        jobs = await sync_to_async(create_jobs)(user=user, request=parsed)
    else:
        jobs, replayed = await sync_to_async(idempotency.jobs_once)(
            user=user, key=key, fingerprint=idempotency.fingerprint(task=task, body=body),
            create=lambda: create_jobs(user=user, request=parsed))
    ids = request.api_job_ids = [job.pk for job in jobs]  # errors from here on name them (errors.after_jobs)
    await sync_to_async(streams.release_connection)()  # not held while following the jobs' streams
    headers = {"X-Job-Ids": ",".join(map(str, ids))}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    reply = Reply(task=task, model=parsed.checkpoint.name, job_ids=ids, created=int(jobs[0].created_at.timestamp()),
                  logprobs=parsed.logprobs is not None)
    if parsed.stream:
        response = StreamingHttpResponse(_stream(reply, include_usage=parsed.include_usage, user_id=user.pk),
                                         content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        try:
            if not (replayed and all(job.is_finished for job in jobs)):
                async for _ in _follow(ids):
                    pass
        except asyncio.CancelledError:  # the client went away: nobody will read these jobs' answers
            await sync_to_async(services.jobs_cancel_unfinished)(job_ids=ids)
            raise
        finished = await streams.db_read(_jobs, ids=ids)
        failed = [job for job in finished if job.status == Job.Status.FAILED]
        if failed:
            raise job_failed_error(failed[0])
        response = JsonResponse(reply.body(finished))
    for name, value in headers.items():
        response[name] = value
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
            done = await streams.db_read(lambda: set(Job.objects.filter(
                pk__in=open_ids, status__in=Job.FINISHED_STATUSES,
                finished_at__lt=timezone.now() - timedelta(seconds=streams.STREAM_END_GRACE_S),
            ).values_list("pk", flat=True)))
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


async def _stream(reply: Reply, *, include_usage: bool, user_id: int) -> AsyncIterator[bytes]:
    """The chunks of the jobs' streams. A job whose stream no longer holds all of its text (a replay after
    STREAM_TTL_S, an end read from the database) gets the rest of its stored output before its finish chunk.
    A failed job ends the stream with its error (and cancels the other choices); Redis lost or a bug ends it
    with an error chunk too, leaving the jobs to finish into the history; a client that leaves cancels them."""
    index = {job_id: i for i, job_id in enumerate(reply.job_ids)}
    sent: dict[int, list[str]] = {job_id: [] for job_id in reply.job_ids}
    # log-probabilities ("lp" entries, runner.compact_logprob) wait for the next text of their job
    pending: dict[int, list[list]] = {job_id: [] for job_id in reply.job_ids}
    offsets: dict[int, int] = {job_id: 0 for job_id in reply.job_ids}
    done = False
    try:
        if reply.chat:
            for i in range(len(reply.job_ids)):
                yield _data(reply.chunk(i, role=True, text=""))
        async for job_id, kind, value in _follow(reply.job_ids):
            if kind == "lp":
                pending[job_id].append(json.loads(value))
            elif kind == "t":
                sent[job_id].append(value)
                entries, pending[job_id] = pending[job_id], []
                yield _data(reply.chunk(index[job_id], text=value, logprobs=entries, offset=offsets[job_id]))
                offsets[job_id] += sum(len(e[0]) for e in entries)
            elif kind == "end":
                job = await streams.db_read(Job.objects.get, pk=job_id)
                if job.status == Job.Status.FAILED:
                    yield _data(job_failed_error(job).body())
                    done = True
                    await sync_to_async(services.jobs_cancel_unfinished)(job_ids=reply.job_ids)
                    return
                streamed = "".join(sent[job_id])
                rest = job.output[len(streamed):] if job.output.startswith(streamed) else ""
                if rest or pending[job_id]:  # text not streamed, or the tokens that spelled a stop string
                    yield _data(reply.chunk(index[job_id], text=rest, logprobs=pending[job_id],
                                            offset=offsets[job_id]))
                reason = FINISH_REASONS.get(job.finish_reason, "stop")
                yield _data(reply.chunk(index[job_id], finish_reason=reason))
        if include_usage:
            jobs = await streams.db_read(_jobs, ids=reply.job_ids)
            yield _data({**reply.chunk(0), "choices": [], "usage": reply.usage(jobs)})
        done = True
        yield b"data: [DONE]\n\n"
    except REDIS_DOWN as exc:  # our failure, not the client's: its jobs run on into the history
        logger.warning("Jobs %s: Redis unreachable mid-stream: %s", reply.job_ids, exc)
        done = True
        yield _data(redis_unavailable().body())
    except Exception:
        done = True
        yield _data(internal_error(f"stream of jobs {reply.job_ids}").body())
    finally:
        streams.stream_close(user_id=user_id)
        if not done:  # the client disconnected mid-stream (CancelledError / aclose): stop its jobs
            await sync_to_async(services.jobs_cancel_unfinished)(job_ids=reply.job_ids)
