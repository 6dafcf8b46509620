"""A Redis stream per job carries its tokens from the worker to every reader (job page SSE, the /v1 API).

Entries of `job:<id>:tokens`, in order:
- `{"start": attempt}`  when a worker claims the job (a re-claim deletes the old entries first: readers
  that saw them get a `reset`),
- `{"t": delta}`        per generated piece of text (the deltas concatenate to the stored output),
- `{"lp": json}`        before the text of each token of a job that asked for log-probabilities: its
                        [text, logprob, [[alternative, logprob], ...]] (runner.compact_logprob),
- `{"end": status}`     once the final row is saved; the key then expires after STREAM_TTL_S.

Cancelling a running job is published on `job:<id>:cancel`, which the worker's task thread listens to, so the
engine's should_cancel turns true within one decode step.
"""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from llmsite import redis_client

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: A finished job whose stream has no end entry this long after finishing gets its end from the database
#: (its stream expired, or it ended without a worker): the job page and the API both wait this long.
STREAM_END_GRACE_S = 3.0


def tokens_key(job_id: int) -> str:
    return f"job:{job_id}:tokens"


def cancel_channel(job_id: int) -> str:
    return f"job:{job_id}:cancel"


# --- worker side ---------------------------------------------------------------------------------------------


def stream_start(*, job_id: int, attempt: int) -> None:
    """A fresh stream for this attempt (a re-claimed job starts over, and so do its readers)."""
    try:
        pipe = redis_client.client().pipeline()
        pipe.delete(tokens_key(job_id))
        pipe.xadd(tokens_key(job_id), {"start": attempt})
        pipe.expire(tokens_key(job_id), settings.JOB_TIME_LIMIT_S + settings.STREAM_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("Job %s: stream not started: %s", job_id, exc)


def stream_append(*, job_id: int, text: str) -> None:
    """Called from the engine's thread per token: one XADD, never raises (the DB keeps the real output)."""
    try:
        redis_client.client().xadd(tokens_key(job_id), {"t": text})
    except redis.RedisError as exc:
        logger.warning("Job %s: token not streamed: %s", job_id, exc)


def stream_end(*, job_id: int, status: str) -> None:
    try:
        pipe = redis_client.client().pipeline()
        pipe.xadd(tokens_key(job_id), {"end": status})
        pipe.expire(tokens_key(job_id), settings.STREAM_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("Job %s: end of stream not written: %s", job_id, exc)


def cancel_publish(*, job_id: int) -> None:
    try:
        redis_client.client().publish(cancel_channel(job_id), "cancel")
    except redis.RedisError as exc:
        logger.warning("Job %s: cancel not published (the worker notices within a second): %s", job_id, exc)


# --- reader side (async) -------------------------------------------------------------------------------------


def _decode(fields: dict[bytes, bytes]) -> tuple[str, Any]:
    (name, value), = fields.items()
    return name.decode(), value.decode()


async def read_events(
    *, job_ids: list[int], last_id: str = "0", block_ms: int = 1000
) -> AsyncIterator[tuple[int, str, str, Any]]:
    """Yield (job_id, entry_id, kind, value) for every entry of the jobs' streams from `last_id` on, following
    them until each has its end entry. kind is "start" | "t" | "lp" | "end" | "idle" (a BLOCK timeout, value None,
    job_id -1), so the caller can look at the database now and then."""
    conn = redis_client.async_client()
    positions = {tokens_key(job_id): last_id for job_id in job_ids}
    by_key = {tokens_key(job_id): job_id for job_id in job_ids}
    try:
        while positions:
            reply = await conn.xread(positions, block=block_ms, count=256)
            if not reply:
                yield -1, "", "idle", None
                continue
            for key, entries in reply:
                key = key.decode()
                for entry_id, fields in entries:
                    entry_id = entry_id.decode()
                    positions[key] = entry_id
                    kind, value = _decode(fields)
                    yield by_key[key], entry_id, kind, value
                    if kind == "end":
                        positions.pop(key, None)
                        break
    finally:
        await conn.aclose()


def release_connection() -> None:
    """Close this thread's database connection before a response starts following a stream (not inside a
    transaction, whose owner still needs it)."""
    if not connection.in_atomic_block:
        connection.close()


async def db_read(read: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a database read for a long-lived stream on a connection that is closed right after, so an open
    stream holds a database connection only for the milliseconds of each read, never while it follows Redis."""

    def read_and_release() -> T:
        try:
            return read(**kwargs)
        finally:
            release_connection()

    return await sync_to_async(read_and_release)()


#: Open streams (job pages and streamed API answers) of one user, as a Redis counter.
def open_streams_key(user_id: int) -> str:
    return f"llmsite:streams:{user_id}"


async def stream_open(*, user_id: int) -> bool:
    """Count one more open stream of the user; False (and nothing counted) past STREAMS_PER_USER. The key
    expires an hour after the last opening, so a count a crash left behind heals itself."""
    conn = redis_client.async_client()
    key = open_streams_key(user_id)
    try:
        opened = await conn.incr(key)
        await conn.expire(key, 3600)
        if opened > settings.STREAMS_PER_USER:
            await conn.decr(key)
            return False
        return True
    finally:
        await conn.aclose()


def stream_close(*, user_id: int) -> None:
    """Count the stream closed. Synchronous on purpose: it runs in the `finally` of a response whose task may
    be cancelled (the client went away), where an await could be cancelled before it counts down."""
    try:
        redis_client.client().decr(open_streams_key(user_id))
    except redis.RedisError as exc:
        logger.warning("Open-stream count of user %s not lowered: %s", user_id, exc)


def sse(*, event: str, data: Any, id: str | None = None) -> bytes:
    head = f"id: {id}\n" if id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()
