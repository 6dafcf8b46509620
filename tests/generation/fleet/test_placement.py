"""generation.fleet.placement: which queue a job goes to, and which worker loads a checkpoint nobody holds."""
from __future__ import annotations

from generation.fleet.placement import MAX_HOPS, Action, Decision, WorkerState, checkpoint_id_of_queue, place, queue_for

MB = 1_000_000


def worker(name: str, holds: dict[int, int] | None = None, *, budget: int = 10 * MB, running: int = 0) -> WorkerState:
    return WorkerState(name=name, holds=holds or {}, budget_bytes=budget, running_jobs=running)


def test_it_sends_a_job_to_the_queue_of_its_checkpoint_when_a_live_worker_holds_it():
    workers = [worker("a", {1: MB}), worker("b", {2: MB})]
    assert queue_for(checkpoint_id=2, workers=workers, default_queue="celery") == "checkpoint.2"


def test_it_sends_a_job_to_the_default_queue_when_no_worker_holds_its_checkpoint():
    workers = [worker("a", {1: MB}), worker("b", {2: MB})]
    assert queue_for(checkpoint_id=3, workers=workers, default_queue="celery") == "celery"
    assert queue_for(checkpoint_id=1, workers=[], default_queue="celery") == "celery"


def test_it_runs_a_job_whose_checkpoint_this_worker_holds():
    me = worker("a", {1: MB})
    assert place(checkpoint_id=1, need_bytes=MB, me=me, others=[worker("b", {1: MB})]) == Decision(Action.RUN)


def test_it_passes_a_job_to_the_checkpoint_queue_when_another_worker_holds_it():
    decision = place(checkpoint_id=2, need_bytes=MB, me=worker("a", {1: MB}), others=[worker("b", {2: MB})])
    assert decision == Decision(Action.FORWARD, "checkpoint.2")


def test_it_loads_here_when_nobody_holds_it_and_this_worker_has_room():
    decision = place(checkpoint_id=3, need_bytes=MB, me=worker("a", {1: MB}), others=[worker("b")])
    assert decision == Decision(Action.LOAD)  # both have room: a tie stays here


def test_it_passes_a_load_to_a_worker_that_needs_to_evict_less():
    me = worker("a", {1: 4 * MB, 2: 4 * MB})  # 2 MB free; loading 3 MB would evict
    decision = place(checkpoint_id=3, need_bytes=3 * MB, me=me, others=[worker("b", {4: 8 * MB}), worker("c")])
    assert decision == Decision(Action.FORWARD, "c.dq2")


def test_it_prefers_the_idler_of_two_equally_cheap_other_workers():
    me = worker("a", {1: 9 * MB})
    others = [worker("b", running=3), worker("c", running=1)]
    assert place(checkpoint_id=3, need_bytes=2 * MB, me=me, others=others) == Decision(Action.FORWARD, "c.dq2")


def test_it_loads_a_job_passed_on_for_cost_instead_of_passing_it_again():
    me = worker("a", {1: 9 * MB})
    assert place(checkpoint_id=3, need_bytes=2 * MB, me=me, others=[worker("b")], hops=1) == Decision(Action.LOAD)


def test_it_stops_passing_a_job_on_after_max_hops():
    decision = place(checkpoint_id=2, need_bytes=MB, me=worker("a"), others=[worker("b", {2: MB})], hops=MAX_HOPS)
    assert decision == Decision(Action.LOAD)


def test_it_ignores_its_own_entry_among_the_others():
    me = worker("a")
    assert place(checkpoint_id=2, need_bytes=MB, me=me, others=[worker("a", {2: MB})]) == Decision(Action.LOAD)


def test_it_reads_checkpoint_ids_from_queue_names_only():
    assert checkpoint_id_of_queue("checkpoint.12") == 12
    assert checkpoint_id_of_queue("checkpoint.x") is None
    assert checkpoint_id_of_queue("celery") is None
