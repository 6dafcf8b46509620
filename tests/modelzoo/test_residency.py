"""The residency policy evicts by demand (queued and recent requests), then recency, never a busy checkpoint."""
from collections import Counter

import pytest

from modelzoo.residency import NoRoom, Resident, choose_evictions

GB = 1024**3


def replay(jobs: list[str], *, budget_slots: int, lookahead: int, demand_aware: bool) -> int:
    """Serve `jobs` in order on one worker that fits `budget_slots` checkpoints; return how many loads it made.

    Demand is what a worker sees in its queue: the next `lookahead` jobs. The recency-only baseline ignores it.
    """
    residents: dict[str, Resident] = {}
    loads = 0
    for clock, key in enumerate(jobs):
        if key not in residents:
            upcoming = Counter(jobs[clock + 1: clock + 1 + lookahead]) if demand_aware else Counter()
            for victim in choose_evictions(list(residents.values()), need_bytes=GB, budget_bytes=budget_slots * GB,
                                           demand=upcoming):
                del residents[victim]
            residents[key] = Resident(key, GB, last_used=clock)
            loads += 1
        residents[key].last_used = clock
    return loads


def test_it_makes_fewer_loads_than_recency_only_on_a_mixed_queue():
    # Three checkpoints, room for two; A is wanted all along, B and C take turns.
    jobs = list("ABCABACABCACBABCAB" * 3)
    demand_loads = replay(jobs, budget_slots=2, lookahead=4, demand_aware=True)
    recency_loads = replay(jobs, budget_slots=2, lookahead=4, demand_aware=False)
    assert demand_loads < recency_loads, (demand_loads, recency_loads)


def test_it_never_evicts_a_checkpoint_with_a_running_batch():
    residents = [Resident("busy", 2 * GB, last_used=0, busy=3), Resident("idle", 2 * GB, last_used=5)]
    assert choose_evictions(residents, need_bytes=2 * GB, budget_bytes=4 * GB, demand={}) == ["idle"]
    with pytest.raises(NoRoom):
        choose_evictions(residents, need_bytes=3 * GB, budget_bytes=4 * GB, demand={})


def test_it_prefers_to_keep_what_jobs_wait_for_over_what_was_used_last():
    residents = [Resident("wanted", GB, last_used=1), Resident("recent", GB, last_used=9)]
    assert choose_evictions(residents, need_bytes=GB, budget_bytes=2 * GB, demand={"wanted": 2}) == ["recent"]
    assert choose_evictions(residents, need_bytes=GB, budget_bytes=2 * GB, demand={}) == ["wanted"]


def test_it_evicts_nothing_when_there_is_room_and_refuses_what_can_never_fit():
    residents = [Resident("a", GB, last_used=0)]
    assert choose_evictions(residents, need_bytes=GB, budget_bytes=3 * GB, demand={}) == []
    with pytest.raises(NoRoom):
        choose_evictions([], need_bytes=4 * GB, budget_bytes=3 * GB, demand={})
