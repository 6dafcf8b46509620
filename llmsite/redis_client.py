"""The one place Redis clients are made: the process-wide client of streams and the fleet, a short-lived probe
for health checks, and the async clients of the streaming views."""
from __future__ import annotations

import redis
import redis.asyncio as aredis
from django.conf import settings

_client: redis.Redis | None = None


def client() -> redis.Redis:
    """The process-wide sync client (a thread-safe connection pool)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=settings.BROKER_CONNECT_TIMEOUT_S, socket_timeout=10
        )
    return _client


def ping(*, timeout_s: float) -> None:
    """Raise unless Redis answers within `timeout_s` (on a connection of its own, so a busy pool cannot hide
    an outage or delay the answer)."""
    probe = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        probe.ping()
    finally:
        probe.close()


def async_client() -> aredis.Redis:
    """A new async client for one streaming response; the caller closes it (`await c.aclose()`)."""
    return aredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=settings.BROKER_CONNECT_TIMEOUT_S)
