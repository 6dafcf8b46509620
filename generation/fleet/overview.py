"""What the fleet looks like now, for /healthz and the admin's Workers page: every live worker's resident and
loading checkpoints (with their names), memory, running jobs, loads and evictions, and the queue depths."""
from __future__ import annotations

import time
from typing import Any

from generation.fleet import queues, registry
from modelzoo.models import Checkpoint


def workers_overview() -> dict[str, Any]:
    """{"workers": [...], "queues": {name: depth}}. Raises when Redis cannot be read."""
    statuses = registry.live_statuses()
    ids = {pk for status in statuses for pk in [*status.get("resident", []), *status.get("loading", [])]}
    names = dict(Checkpoint.objects.filter(pk__in=ids).values_list("pk", "name"))
    now = time.time()

    def named(pks: list[int]) -> list[dict[str, Any]]:
        return [{"id": pk, "name": names.get(pk, "")} for pk in pks]

    workers = [{
        "name": status["name"],
        "resident": named(status.get("resident", [])),
        "loading": named(status.get("loading", [])),
        "memory_used_bytes": status.get("memory_used_bytes", 0),
        "memory_budget_bytes": status.get("memory_budget_bytes", 0),
        "running_jobs": status.get("running_jobs", 0),
        "loads": status.get("loads", 0),
        "evictions": status.get("evictions", 0),
        "heartbeat_age_s": round(max(0.0, now - status.get("heartbeat_at", now)), 1),
    } for status in statuses]
    return {"workers": workers, "queues": queues.depths()}
