"""The engine's thread policy (modelzoo.engine.threads.choose_threads) and ENGINE_THREADS reaching every place
torch computes: the worker's engine, the validation child and finetune."""
from __future__ import annotations

import json

import pytest
import torch
from django.core.management import call_command

from modelzoo import validation
from modelzoo.engine import threads
from modelzoo.engine.threads import choose_threads


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_quiet_host_of_its_own_computes_on_every_core():
    assert choose_threads(2) == 2
    assert choose_threads(16, load=0.5) == 16


def test_two_cores_shared_with_the_web_server_take_one_thread():
    assert choose_threads(2, shared_host=True) == 1
    assert choose_threads(8, shared_host=True) == 7


def test_the_cores_a_measured_load_keeps_busy_are_left_to_it():
    assert choose_threads(2, load=1.2) == 1
    assert choose_threads(8, load=3.0) == 5
    assert choose_threads(8, shared_host=True, load=0.2) == 7  # the web server's core is already left


def test_never_fewer_than_one_thread():
    assert choose_threads(2, shared_host=True, load=7.5) == 1
    assert choose_threads(1, shared_host=True) == 1
    assert choose_threads(0) == 1


def test_the_setting_wins_over_the_policy():
    assert choose_threads(2, configured=3, shared_host=True, load=6.0) == 3


def test_the_host_is_read_from_its_cores_load_and_environment(monkeypatch):
    monkeypatch.setattr(threads, "host_cores", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    monkeypatch.delenv(threads.SHARED_HOST_ENV, raising=False)
    assert threads.host_threads() == 3
    monkeypatch.setenv(threads.SHARED_HOST_ENV, "1")
    assert threads.host_threads() == 3
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.host_threads() == 3 and threads.host_threads(configured=2) == 2


def test_the_validation_child_gets_the_configured_threads(settings, monkeypatch, tmp_path):
    settings.ENGINE_THREADS = 3
    seen = {}

    def fake_run(command, *, env, **kwargs):
        seen.update(env)
        return validation._Finished(returncode=0, stdout=json.dumps({"ok": True}).encode(), stderr=b"", seconds=0.1,
                                    peak_memory_bytes=0, timed_out=False)

    monkeypatch.setattr(validation, "_run", fake_run)
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF")
    validation.validate(path)
    assert seen["OMP_NUM_THREADS"] == "3"


@pytest.mark.django_db
def test_finetune_trains_with_the_configured_threads(settings, monkeypatch, tmp_path, checkpoint, torch_threads):
    import modelzoo.engine
    import modelzoo.engine.finetune
    import modelzoo.engine.lora

    settings.ENGINE_THREADS = 1 if torch.get_num_threads() != 1 else 2
    seen = []
    monkeypatch.setattr(modelzoo.engine, "load_checkpoint", lambda *a, **k: type("Loaded", (), {"model": None})())
    monkeypatch.setattr(modelzoo.engine.finetune, "finetune",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or [1.0])
    monkeypatch.setattr(modelzoo.engine.lora, "save_adapter", lambda *a, **k: None)
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    call_command("finetune", "--base", checkpoint.name, "--data", str(data), "--out", str(tmp_path / "out"),
                 stdout=__import__("io").StringIO())
    assert seen == [settings.ENGINE_THREADS]


@pytest.mark.django_db
def test_the_workers_engine_computes_with_the_configured_threads(settings, monkeypatch, checkpoint, torch_threads):
    import modelzoo.engine
    from modelzoo import pool

    settings.ENGINE_THREADS = 1 if torch.get_num_threads() != 1 else 2
    seen = []

    def fake_load(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(modelzoo.engine, "load_checkpoint", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        pool._load_engine(checkpoint)
    assert seen == [settings.ENGINE_THREADS]
