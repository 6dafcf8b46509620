"""Which checkpoints stay resident in a worker's memory budget: eviction by demand, then recency.

Pure policy, no Django and no torch, so it can be replayed on a job sequence in tests. A checkpoint with a
running batch is never evicted; among the others the one with the fewest queued or recent requests goes
first, and recency only breaks ties (a plain LRU would throw out a checkpoint that jobs are waiting for).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass


class NoRoom(RuntimeError):
    """The checkpoint does not fit even after evicting everything that may be evicted."""


@dataclass
class Resident:
    key: Hashable
    size_bytes: int
    last_used: float
    busy: int = 0  # requests running on it now


def choose_evictions(
    residents: list[Resident], *, need_bytes: int, budget_bytes: int, demand: Mapping[Hashable, int]
) -> list[Hashable]:
    """The keys to evict, in order, so that `need_bytes` more fit in `budget_bytes`."""
    free = budget_bytes - sum(r.size_bytes for r in residents)
    if need_bytes > budget_bytes:
        raise NoRoom(f"needs {need_bytes} bytes; the whole budget is {budget_bytes}")
    victims: list[Hashable] = []
    idle = sorted((r for r in residents if r.busy == 0), key=lambda r: (demand.get(r.key, 0), r.last_used))
    for resident in idle:
        if free >= need_bytes:
            break
        victims.append(resident.key)
        free += resident.size_bytes
    if free < need_bytes:
        raise NoRoom(f"needs {need_bytes} bytes; {free} can be freed without stopping a running batch")
    return victims
