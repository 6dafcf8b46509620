"""modelzoo.pool: each checkpoint is loaded once per process, even when many job threads ask at once."""
from __future__ import annotations

import threading
import time

import pytest

from modelzoo import pool
from modelzoo.models import Checkpoint

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_pool():
    pool.clear()
    yield
    pool.clear()


class Loaded:
    def close(self) -> None:
        pass


def test_it_loads_a_checkpoint_once_under_concurrent_calls(monkeypatch, checkpoint):
    loads: list[int] = []

    def slow_load(ckpt):
        loads.append(ckpt.pk)
        time.sleep(0.2)
        return Loaded()

    monkeypatch.setattr(pool, "_load_engine", slow_load)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(pool.engine_for(checkpoint))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [checkpoint.pk]
    assert len(results) == 8 and all(result is results[0] for result in results)


def test_it_keeps_one_engine_per_checkpoint(monkeypatch, checkpoint):
    monkeypatch.setattr(pool, "_load_engine", lambda ckpt: Loaded())
    other = Checkpoint.objects.create(name="ft", format="gguf", path=checkpoint.path, status="ready")
    assert pool.engine_for(checkpoint) is pool.engine_for(Checkpoint.objects.get(pk=checkpoint.pk))
    assert pool.engine_for(other) is not pool.engine_for(checkpoint)
    assert pool.loaded_checkpoint_ids() == sorted([checkpoint.pk, other.pk])


def test_it_reloads_when_the_path_changes(monkeypatch, checkpoint):
    monkeypatch.setattr(pool, "_load_engine", lambda ckpt: Loaded())
    first = pool.engine_for(checkpoint)
    checkpoint.path = str(checkpoint.file_path())  # the same file under another path: the row was repointed
    assert pool.engine_for(checkpoint) is not first


def test_it_caps_the_context_window_at_the_served_length(checkpoint, settings):
    settings.ENGINE_MAX_SEQ_LEN = 512
    assert pool.context_window(checkpoint) == 512


def test_it_caches_checkpoint_info(monkeypatch, checkpoint, settings):
    calls = []
    original = pool._inspect
    monkeypatch.setattr(pool, "_inspect", lambda ckpt: calls.append(ckpt.pk) or original(ckpt))
    info = pool.checkpoint_info(checkpoint)
    assert pool.checkpoint_info(checkpoint) is info
    assert calls == [checkpoint.pk]
    assert info.config.max_seq_len == 8192
    assert pool.context_window(checkpoint) == min(8192, settings.ENGINE_MAX_SEQ_LEN)
    assert info.tokenizer.encode("Hello")


@pytest.mark.slow
def test_it_loads_the_bundled_model_once(checkpoint):
    engine = pool.engine_for(checkpoint)
    assert pool.engine_for(checkpoint) is engine
    assert pool.loaded_checkpoint_ids() == [checkpoint.pk]


@pytest.fixture
def two_checkpoints(monkeypatch, checkpoint):
    """The bundled checkpoint and a second row on the same file; each 'load' is recorded and can be closed."""
    other = Checkpoint.objects.create(name="other", format="gguf", path=checkpoint.path, status="ready")
    events: list[tuple[str, int]] = []

    class Recorded:
        def __init__(self, pk: int) -> None:
            self.pk = pk
            events.append(("load", pk))

        def close(self) -> None:
            events.append(("close", self.pk))

    monkeypatch.setattr(pool, "_load_engine", lambda ckpt: Recorded(ckpt.pk))
    return checkpoint, other, events


def test_it_evicts_to_stay_within_the_memory_budget(settings, two_checkpoints):
    first, second, events = two_checkpoints
    settings.WORKER_MEMORY_BUDGET_BYTES = int(pool.estimated_bytes(first) * 1.5)  # room for one
    pool.engine_for(first)
    pool.engine_for(second)
    assert events == [("load", first.pk), ("close", first.pk), ("load", second.pk)]
    assert pool.loaded_checkpoint_ids() == [second.pk]
    assert pool.resident_bytes() <= settings.WORKER_MEMORY_BUDGET_BYTES


def test_it_never_evicts_a_checkpoint_while_a_job_runs_on_it(settings, two_checkpoints):
    from modelzoo.residency import NoRoom

    first, second, events = two_checkpoints
    settings.WORKER_MEMORY_BUDGET_BYTES = int(pool.estimated_bytes(first) * 1.5)
    with pool.serving(first):
        with pytest.raises(NoRoom):
            pool.engine_for(second)
        assert ("close", first.pk) not in events
    pool.engine_for(second)  # the job ended: now it may go
    assert ("close", first.pk) in events


def test_it_keeps_the_checkpoint_jobs_wait_for(settings, two_checkpoints, make_job, owner, monkeypatch):
    from generation.selectors import checkpoint_demand

    monkeypatch.setattr(pool, "_demand_source", checkpoint_demand)  # as the worker sets it at start
    first, second, events = two_checkpoints
    third = Checkpoint.objects.create(name="third", format="gguf", path=first.path, status="ready")
    settings.WORKER_MEMORY_BUDGET_BYTES = int(pool.estimated_bytes(first) * 2.5)  # room for two
    pool.engine_for(first)
    pool.engine_for(second)  # the most recent
    make_job(checkpoint=second)  # queued for `second`...
    make_job(checkpoint=second)
    make_job(checkpoint=first).delete()  # ...nothing for `first`
    pool.engine_for(third)
    assert ("close", first.pk) in events and ("close", second.pk) not in events
