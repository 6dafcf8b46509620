"""The `Idempotency-Key` request header: a request that repeats a key its user sent before gets the jobs the
first one made (their reply, or their stream replayed) instead of new ones, so a client that retries after a
timeout or a dropped connection does not run, and pay for, the same generation twice.

A key is kept in Redis (`api:idempotency:<user id>:<sha256 of the key>`, for KEY_TTL_S) rather than on the
Job row, because:
- one request makes `n` jobs (one per choice), so a key names a list of jobs, not one row;
- SET NX claims a key atomically for concurrent duplicates across web processes (the second sees the claim
  and answers 409, which clients retry) without a migration or a constraint on the jobs table;
- keys only need to outlive a client's retries (a day, as other APIs keep them), so they expire by
  themselves; Redis is what every request needs anyway (the queue, the streams), so when it is gone the API
  answers 503 and no key can be missed.

Rules (as the IETF draft "The Idempotency-Key HTTP Header Field" words them): the same key with another
body or endpoint is 422; the same key while its first request is still creating the jobs is 409 with
Retry-After; a key is released when the first request made no jobs (a 4xx or 429 from the checks) or made
jobs that never reached the queue (503), and when the user has deleted its jobs since.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from generation.api.errors import IDEMPOTENCY_HEADER as HEADER
from generation.api.errors import ApiError
from generation.models import Job
from llmsite import redis_client

#: How long a key names its jobs.
KEY_TTL_S = 24 * 3600
#: How long a key stays claimed by a request still creating its jobs (a process that dies meanwhile
#: frees it after this).
CLAIM_TTL_S = 60
MAX_KEY_LENGTH = 255


def request_key(request: HttpRequest) -> str | None:
    """The request's Idempotency-Key, None when it sends none; 400 when it is empty or too long."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ApiError(400, f"The {HEADER} header must be 1 to {MAX_KEY_LENGTH} characters", param=HEADER,
                       code="invalid_idempotency_key")
    return key


def fingerprint(*, task: str, body: Any) -> str:
    """What makes two requests the same request: the endpoint and the JSON body, whatever its key order."""
    return hashlib.sha256(json.dumps([task, body], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _redis_key(*, user_id: int, key: str) -> str:
    return f"api:idempotency:{user_id}:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


def jobs_once(*, user: Any, key: str, fingerprint: str, create: Callable[[], list[Job]]) -> tuple[list[Job], bool]:
    """The jobs of the user's earlier request with this key (and True), else `create()`'s (and False), which
    the key then names for KEY_TTL_S. Raises 422 for a key reused with another request, 409 while the first
    request with the key is still creating its jobs."""
    conn = redis_client.client()
    name = _redis_key(user_id=user.pk, key=key)
    for _ in range(3):
        if conn.set(name, json.dumps({"fingerprint": fingerprint, "job_ids": None}), nx=True, ex=CLAIM_TTL_S):
            try:
                jobs = create()
            except BaseException:  # no jobs that can run were made: the next request with the key may try
                conn.delete(name)
                raise
            conn.set(name, json.dumps({"fingerprint": fingerprint, "job_ids": [job.pk for job in jobs]}),
                     ex=KEY_TTL_S)
            return jobs, False
        raw = conn.get(name)
        if raw is None:  # expired between the SET and the GET
            continue
        entry = json.loads(raw)
        if entry["fingerprint"] != fingerprint:
            raise ApiError(422, f"This {HEADER} was already used with a different request; use a new key for a "
                                "new request.", param=HEADER, code="idempotency_key_reused")
        if entry["job_ids"] is None:
            raise ApiError(409, f"A request with this {HEADER} is still being processed; retry shortly.",
                           param=HEADER, code="idempotency_key_in_use", retry_after_s=1)
        ids = entry["job_ids"]
        by_id = Job.objects.filter(owner=user).in_bulk(ids)
        if len(by_id) == len(ids):
            return [by_id[i] for i in ids], True
        conn.delete(name)  # the user deleted those jobs: the key is free for a new request
    raise ApiError(409, f"A request with this {HEADER} is still being processed; retry shortly.", param=HEADER,
                   code="idempotency_key_in_use", retry_after_s=1)
