"""Liveness checks behind /healthz: the database, Redis, the Celery workers and jobs past their deadline, each
with a short timeout; beside them what each live worker holds (checkpoints, memory) and the queue depths."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection

from generation import selectors
from generation.fleet.overview import workers_overview
from llmsite import redis_client


def check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


def check_redis() -> dict[str, Any]:
    try:
        redis_client.ping(timeout_s=settings.HEALTHZ_TIMEOUT_S)
    except Exception as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


def check_jobs() -> dict[str, Any]:
    """Jobs past their deadline: running past the time limit plus a minute, or with an expired lease (its
    worker is gone and the reconciler has not yet put it back). Not ok while there are any."""
    try:
        overdue = selectors.jobs_overdue().count()
    except Exception as exc:
        return {"ok": False, "overdue": None, "error": str(exc)}
    result: dict[str, Any] = {"ok": overdue == 0, "overdue": overdue}
    if overdue:
        result["error"] = f"{overdue} job(s) past their deadline"
    return result


def check_workers() -> dict[str, Any]:
    """`celery inspect ping` with a short timeout: ok when at least one worker answers."""
    from llmsite.celery import app

    try:
        with app.connection_for_write() as conn:
            replies = app.control.inspect(timeout=settings.HEALTHZ_TIMEOUT_S, connection=conn).ping() or {}
    except Exception as exc:
        return {"ok": False, "count": 0, "names": [], "error": str(exc)}
    names = sorted(replies)
    result: dict[str, Any] = {"ok": bool(names), "count": len(names), "names": names}
    if not names:
        result["error"] = "no worker answered"
    return result


def workers_and_queues() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """What the live workers published with their heartbeats, and the queue depths; empty when unreadable."""
    try:
        overview = workers_overview()
    except Exception:
        return [], {}
    return overview["workers"], overview["queues"]


def health() -> tuple[bool, dict[str, Any]]:
    checks = {"database": check_database(), "redis": check_redis()}
    checks["jobs"] = check_jobs() if checks["database"]["ok"] else {"ok": False, "overdue": None,
                                                                     "error": "database is down"}
    # Without Redis no worker can answer; skip the broadcast instead of waiting for its timeout.
    checks["workers"] = check_workers() if checks["redis"]["ok"] else {
        "ok": False, "count": 0, "names": [], "error": "redis is down",
    }
    ok = all(check["ok"] for check in checks.values())
    live, queues = workers_and_queues() if checks["redis"]["ok"] else ([], {})
    checks["workers"]["live"] = live
    return ok, {"status": "ok" if ok else "fail", **checks, "queues": queues}
