"""OpenAI-shaped errors ({"error": {"message", "type", "param", "code"}}) and the decorator of every /v1 view.

Every answer of /v1 is JSON, whatever goes wrong: the decorator checks the method (405), the Bearer API key
(401) and the body's Content-Type (415), and turns what the view raises into OpenAI's error shape: ApiError
as it says, a body over DATA_UPLOAD_MAX_MEMORY_SIZE into 413, Redis unreachable into 503 with Retry-After,
and anything else into 500 `internal_error` whose message carries an id that the log line (with the
traceback) carries too.

Headers the official `openai` client reads: `Retry-After` (seconds) on 429 and 503, which it waits before
retrying; `x-should-retry: false` on errors that retrying cannot mend (a job that failed), which it obeys
before looking at the status (`_should_retry` in openai/_base_client.py).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from generation import services

logger = logging.getLogger(__name__)

#: The request header that makes a retry return the first request's jobs (generation.api.idempotency).
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Retry-After when Redis (the job queue and the token streams) cannot be reached.
REDIS_RETRY_AFTER_S = 10
#: Redis errors that mean "unreachable for now" (a refused or dropped connection, a timeout); other Redis
#: errors are bugs or misconfiguration and answer 500 like any other.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class ApiError(Exception):
    """An answer other than success: OpenAI's error body, its status, and the headers a client acts on
    (`Retry-After` from `retry_after_s`, `x-should-retry` from `should_retry`, any others in `headers`)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after_s: int | None = None, should_retry: bool | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after_s, self.should_retry, self.headers = retry_after_s, should_retry, dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after_s is not None:
            response["Retry-After"] = str(self.retry_after_s)
        if self.should_retry is not None:
            response["x-should-retry"] = "true" if self.should_retry else "false"
        for name, value in self.headers.items():
            response[name] = value
        return response


def redis_unavailable(**kwargs: Any) -> ApiError:
    return ApiError(503, "The job queue (Redis) cannot be reached right now; try again later.", type="server_error",
                    code="service_unavailable", retry_after_s=REDIS_RETRY_AFTER_S, **kwargs)


def internal_error(where: str) -> ApiError:
    """Log the exception being handled (with its traceback) under a new error id, and return the 500 whose
    message names that id, so a user's report leads to the log line."""
    error_id = uuid.uuid4().hex[:12]
    logger.exception("Error %s in %s", error_id, where)
    return ApiError(500, f"The server had an error while processing your request (error id {error_id}).",
                    type="server_error", code="internal_error")


def after_jobs(request: HttpRequest, error: ApiError) -> ApiError:
    """An error that comes once the request has made its jobs (`request.api_job_ids`) names them (X-Job-Ids)
    and, unless an Idempotency-Key would bring those same jobs back, tells the client not to retry: each retry
    would make new jobs while these run on into the history."""
    ids = getattr(request, "api_job_ids", None)
    if ids:
        error.headers.setdefault("X-Job-Ids", ",".join(map(str, ids)))
        if error.should_retry is None and IDEMPOTENCY_HEADER not in request.headers:
            error.should_retry = False
    return error


def _is_json(content_type: str) -> bool:
    """application/json, or a structured `+json` type (application/merge-patch+json...)."""
    kind, _, subtype = content_type.strip().lower().partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def api_view(methods: tuple[str, ...]) -> Callable:
    """Allowed methods (405), Bearer API key auth (401), a JSON body on POST (415), and every exception of the
    view as OpenAI error JSON, for async views."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, f"Method {request.method} not allowed", code="method_not_allowed",
                                   headers={"Allow": ", ".join(methods)})
                scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not secret.strip():
                    raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'. Create a key on "
                                        "your account page.", code="invalid_api_key")
                user = await sync_to_async(services.api_key_authenticate)(secret=secret.strip())
                if user is None:
                    raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
                if request.method == "POST" and not _is_json(request.content_type or ""):
                    raise ApiError(415, f"Unsupported Content-Type '{request.content_type or ''}': send the body "
                                        "as JSON with 'Content-Type: application/json'.",
                                   code="unsupported_media_type")
                request.api_user = user
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                error = exc
            except RequestDataTooBig:  # raised when the view reads request.body
                error = ApiError(413, f"The request body is larger than the limit of "
                                      f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.", code="request_too_large")
            except REDIS_DOWN as exc:
                logger.warning("%s %s: Redis unreachable: %s", request.method, request.path, exc)
                error = redis_unavailable()
            except Exception:
                error = internal_error(f"{request.method} {request.path}")
            return after_jobs(request, error).response()

        return csrf_exempt(wrapper)

    return decorate


@csrf_exempt
def unknown_url(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any other path under /v1/: OpenAI's 404 (JSON, not the site's HTML page)."""
    return ApiError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url").response()
