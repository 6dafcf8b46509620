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
    other = Checkpoint.objects.create(name="ft", format="gguf", path="/ft.gguf", status="ready")
    assert pool.engine_for(checkpoint) is pool.engine_for(Checkpoint.objects.get(pk=checkpoint.pk))
    assert pool.engine_for(other) is not pool.engine_for(checkpoint)
    assert pool.loaded_checkpoint_ids() == sorted([checkpoint.pk, other.pk])


def test_it_reloads_when_the_path_changes(monkeypatch, checkpoint):
    monkeypatch.setattr(pool, "_load_engine", lambda ckpt: Loaded())
    first = pool.engine_for(checkpoint)
    checkpoint.path = "/moved.gguf"
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


def test_it_loads_the_bundled_model_once(checkpoint):
    engine = pool.engine_for(checkpoint)
    assert pool.engine_for(checkpoint) is engine
    assert pool.loaded_checkpoint_ids() == [checkpoint.pk]
