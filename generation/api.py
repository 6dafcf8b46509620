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
from dataclasses import dataclass, field
from datetime import timedelta
from functools import wraps
from typing import Any, AsyncIterator, Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from generation import prompts, services, streams, worker_registry
from generation.models import Job
from modelzoo import pool
from modelzoo.models import Checkpoint

MAX_N = 8
MAX_STOP = 4
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JsonResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JsonResponse(body, status=self.status)


def api_view(methods: tuple[str, ...]) -> Callable:
    """Bearer API key auth (401), allowed methods (405) and ApiError -> OpenAI error JSON, for async views."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, f"Method {request.method} not allowed", code="method_not_allowed")
                scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not secret.strip():
                    raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'. Create a key on "
                                        "your account page.", code="invalid_api_key")
                user = await sync_to_async(services.api_key_authenticate)(secret=secret.strip())
                if user is None:
                    raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
                request.api_user = user
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        return csrf_exempt(wrapper)

    return decorate


# --- request parsing -----------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    task: str
    checkpoint: Checkpoint
    prompt: str
    options: dict[str, Any]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    prompt_tokens: int = 0
    job_ids: list[int] = field(default_factory=list)


def _number(body: dict, name: str, default: float, *, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ApiError(400, f"'{name}' must be a number", param=name, code="invalid_type")
    if value < low or value > high or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ApiError(400, f"'{name}' must be in {bound}, got {value}", param=name, code="invalid_value")
    return float(value)


def _integer(body: dict, name: str, *, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer", param=name, code="invalid_type")
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"'{name}' must be between {low} and {high}" if high is not None else
                       f"'{name}' must be at least {low}", param=name, code="invalid_value")
    return value


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages", code="invalid_value")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (*ROLES, "developer"):
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role",
                           code="invalid_value")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content", code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content",
                           code="invalid_type")
        role = "system" if message["role"] == "developer" else message["role"]
        clean.append({"role": role, "content": content})
    return clean


def parse_request(body: Any, *, task: str) -> GenerationRequest:
    """Validate an OpenAI request body (400 naming the parameter, 404 for an unknown model) and count the
    prompt's tokens against the context window the workers serve (400 context_length_exceeded)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", param="model", code="missing_required_parameter")
    checkpoint = Checkpoint.objects.ready().filter(name=model).first()
    if checkpoint is None:
        raise ApiError(404, f"The model '{model}' does not exist or is not ready", type="invalid_request_error",
                       param="model", code="model_not_found")
    if task == Job.Task.CHAT:
        messages = _messages(body)
        options: dict[str, Any] = {"messages": messages}
        users = [m["content"] for m in messages if m["role"] == "user"]
        prompt, prompt_param = (users[-1] if users else messages[-1]["content"]), "messages"
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (token arrays and batches are not supported)",
                           param="prompt", code="invalid_type")
        options, prompt_param = {}, "prompt"
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP
                             or not all(isinstance(s, str) for s in stop)):
        raise ApiError(400, f"'stop' must be a string or an array of at most {MAX_STOP} strings", param="stop",
                       code="invalid_value")
    if stop:
        options["stop"] = stop
    temperature = _number(body, "temperature", 1.0, low=0.0, high=2.0)
    top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True)
    seed = _integer(body, "seed", low=0, high=2**63 - 1)
    n = _integer(body, "n", low=1, high=MAX_N) or 1
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, max_name, low=1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options", code="invalid_type")

    info = pool.checkpoint_info(checkpoint)
    window = pool.context_window(checkpoint)
    ids = prompts.prompt_token_ids(info=info, task=task, prompt=prompt, options=options)
    if len(ids) + 1 > window:
        raise ApiError(400, f"This model's maximum context length is {window} tokens, but your {prompt_param} is "
                            f"{len(ids)} tokens.", param=prompt_param, code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(16 if task == Job.Task.COMPLETION else 256, window - len(ids))
    elif len(ids) + max_tokens > window:
        raise ApiError(400, f"This model's maximum context length is {window} tokens. However, you requested "
                            f"{len(ids) + max_tokens} tokens ({len(ids)} in the {prompt_param}, {max_tokens} for the "
                            "completion).", param=max_name, code="context_length_exceeded")
    return GenerationRequest(
        task=task, checkpoint=checkpoint, prompt=prompt, options=options, max_tokens=max_tokens,
        temperature=temperature, top_p=top_p, seed=seed, n=n, stream=stream,
        include_usage=bool(stream_options.get("include_usage")), prompt_tokens=len(ids),
    )


def check_limits(*, user: Any, n: int) -> None:
    """429 for the user's rate limit, their unfinished jobs or the queue's length; 503 without a live worker."""
    since = timezone.now() - timedelta(minutes=1)
    limit = settings.API_RATE_LIMIT_PER_MIN
    if limit and Job.objects.filter(owner=user, source=Job.Source.API, created_at__gte=since).count() + n > limit:
        raise ApiError(429, f"Rate limit reached: {limit} API jobs per minute", type="requests",
                       code="rate_limit_exceeded")
    limit = settings.API_MAX_ACTIVE_JOBS_PER_USER
    active = Job.objects.filter(owner=user, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()
    if limit and active + n > limit:
        raise ApiError(429, f"Too many unfinished jobs: at most {limit} per user", type="requests",
                       code="rate_limit_exceeded")
    limit = settings.QUEUE_MAX_LENGTH
    if limit and Job.objects.filter(status=Job.Status.QUEUED).count() + n > limit:
        raise ApiError(429, "The job queue is full; try again later", type="requests", code="queue_full")
    if not worker_registry.live_count():
        raise ApiError(503, "No worker is available to serve the request; try again later", type="server_error",
                       code="no_worker")


def create_jobs(*, user: Any, request: GenerationRequest) -> list[Job]:
    check_limits(user=user, n=request.n)
    jobs = []
    for i in range(request.n):
        jobs.append(services.job_create(
            owner=user, task=request.task, prompt=request.prompt, options=request.options,
            checkpoint=request.checkpoint, temperature=request.temperature, top_p=request.top_p,
            max_tokens=request.max_tokens, seed=None if request.seed is None else request.seed + i,
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
    reply = _Reply(task=task, model=parsed.checkpoint.name, job_ids=ids, created=int(time.time()))
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
                finished_at__lt=timezone.now() - timedelta(seconds=5)).values_list("pk", flat=True)))()
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


FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop", "timeout": "length"}


@dataclass
class _Reply:
    task: str
    model: str
    job_ids: list[int]
    created: int

    @property
    def chat(self) -> bool:
        return self.task == Job.Task.CHAT

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.job_ids[0]}"

    def usage(self, jobs: list[Job]) -> dict[str, int]:
        prompt = jobs[0].prompt_tokens or 0
        completion = sum(job.completion_tokens or 0 for job in jobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def body(self, jobs: list[Job]) -> dict[str, Any]:
        choices = []
        for i, job in enumerate(jobs):
            reason = FINISH_REASONS.get(job.finish_reason, "stop")
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": job.output},
                                "finish_reason": reason, "logprobs": None})
            else:
                choices.append({"index": i, "text": job.output, "finish_reason": reason, "logprobs": None})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage(jobs),
                "job_ids": self.job_ids}

    def chunk(self, index: int, *, text: str | None = None, role: bool = False,
              finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}


def _data(payload: Any) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _stream(reply: _Reply, *, include_usage: bool) -> AsyncIterator[bytes]:
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
