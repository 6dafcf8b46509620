"""The engine's thread policy (modelzoo.engine.threads.choose_threads) and ENGINE_THREADS reaching every place
torch computes: the worker's engine, the validation child and finetune (which also run at a lower priority)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from django.core.management import call_command

from modelzoo import validation
from modelzoo.engine import Engine, SamplingParams, threads
from modelzoo.engine.threads import choose_threads
from tests.modelzoo.gguf_factory import write_tiny_gguf
from tests.modelzoo.test_engine_support import tiny_checkpoint


@pytest.fixture(scope="module")
def packed_tiny():
    return tiny_checkpoint()


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_quiet_host_of_its_own_computes_on_every_core():
    assert choose_threads(2) == 2
    assert choose_threads(16, load=0.4) == 16


def test_two_cores_shared_with_the_web_server_take_one_thread():
    assert choose_threads(2, shared_host=True) == 1
    assert choose_threads(8, shared_host=True) == 7


def test_the_cores_a_measured_load_keeps_busy_are_left_to_it():
    assert choose_threads(2, load=1.2) == 1
    assert choose_threads(8, load=3.0) == 5
    assert choose_threads(8, shared_host=True, load=0.2) == 7  # the web server's core is already left


def test_a_core_other_work_keeps_busy_half_the_time_is_left_to_it():
    assert choose_threads(2, load=0.6) == 1  # a spinning neighbour beside a 2-thread team gets ~2/3 of a core
    assert choose_threads(2, load=0.3) == 2


def test_never_fewer_than_one_thread():
    assert choose_threads(2, shared_host=True, load=7.5) == 1
    assert choose_threads(1, shared_host=True) == 1
    assert choose_threads(0) == 1


def test_the_setting_wins_over_the_policy():
    assert choose_threads(2, configured=3, shared_host=True, load=6.0) == 3


def test_the_host_is_read_from_its_cores_load_and_environment(monkeypatch):
    monkeypatch.setattr(threads, "host_cores", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    monkeypatch.delenv(threads.SHARED_HOST_ENV, raising=False)
    assert threads.host_threads() == 3
    monkeypatch.setenv(threads.SHARED_HOST_ENV, "1")
    assert threads.host_threads() == 3
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.host_threads() == 3 and threads.host_threads(configured=2) == 2


def test_the_validation_child_gets_the_configured_threads_and_a_lower_priority(settings, monkeypatch, tmp_path):
    settings.ENGINE_THREADS = 3
    seen = {}

    def fake_run(command, *, env, preexec_fn, **kwargs):
        seen.update(env)
        # the child's own setup, in a real child: what niceness does it run at?
        probe = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]
        seen["niceness"] = int(subprocess.run(probe, preexec_fn=preexec_fn, capture_output=True, check=True).stdout)
        return validation._Finished(returncode=0, stdout=json.dumps({"ok": True}).encode(), stderr=b"", seconds=0.1,
                                    peak_memory_bytes=0, timed_out=False)

    monkeypatch.setattr(validation, "_run", fake_run)
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF")
    validation.validate(path)
    assert seen["OMP_NUM_THREADS"] == "3"
    assert seen["niceness"] >= threads.BACKGROUND_NICENESS


@pytest.mark.django_db
def test_finetune_trains_with_the_configured_threads(settings, monkeypatch, tmp_path, checkpoint, torch_threads):
    import modelzoo.engine
    import modelzoo.engine.finetune
    import modelzoo.engine.lora

    settings.ENGINE_THREADS = 1 if torch.get_num_threads() != 1 else 2
    seen = []
    monkeypatch.setattr(modelzoo.engine, "load_checkpoint", lambda *a, **k: type("Loaded", (), {"model": None})())
    monkeypatch.setattr(modelzoo.engine.finetune, "finetune", lambda *a, **k: seen.append(
        (torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, 0), k["governor"].configured)) or [1.0])
    monkeypatch.setattr(modelzoo.engine.lora, "save_adapter", lambda *a, **k: None)
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    with ThreadPoolExecutor(1) as thread:  # Linux keeps niceness per thread: the test's own stays as it was
        thread.submit(call_command, "finetune", "--base", checkpoint.name, "--data", str(data),
                      "--out", str(tmp_path / "out"), stdout=io.StringIO()).result()
    assert seen == [(settings.ENGINE_THREADS, threads.BACKGROUND_NICENESS, settings.ENGINE_THREADS)]


def test_finetune_gives_up_threads_to_a_busy_host_between_steps(torch_threads, tmp_path):
    from modelzoo.engine import load_checkpoint
    from modelzoo.engine.finetune import Example, finetune

    torch.set_num_threads(2)
    governor = threads.ThreadGovernor(cores=2, shared=False, measure=Readings(0.1, 1.0), interval_s=0)
    seen = []
    tiny = load_checkpoint(write_tiny_gguf(tmp_path / "tiny.gguf"), device="cpu", dtype=torch.float32)
    finetune(tiny, [Example("a", "b"), Example("c", "d")], rank=2,
             on_step=lambda *_: seen.append(torch.get_num_threads()), governor=governor)
    assert seen == [2, 1]


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


class Readings:
    """What HostCpu.others would say, one reading per tick."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self):
        return self.values.pop(0)


def test_the_governor_steps_down_when_a_neighbour_starts_and_back_up_when_it_stops(torch_threads):
    torch.set_num_threads(2)
    governor = threads.ThreadGovernor(cores=2, shared=False, measure=Readings(0.1, 0.7, 1.0, 0.9, 0.05), interval_s=0)
    seen = []
    for _ in range(5):
        governor.tick()
        seen.append(torch.get_num_threads())
    assert seen == [2, 1, 1, 1, 2]


def test_the_governor_leaves_a_configured_count_and_waits_its_interval(torch_threads):
    torch.set_num_threads(2)
    fixed = threads.ThreadGovernor(3, cores=2, shared=False, measure=Readings(), interval_s=0)
    assert fixed.tick() is None and torch.get_num_threads() == 2  # ENGINE_THREADS: nothing measured or changed
    slow = threads.ThreadGovernor(cores=2, shared=False, measure=Readings(1.0), interval_s=3600)
    assert slow.tick() is None and torch.get_num_threads() == 2


def test_host_cpu_sees_a_busy_neighbour():
    """Whatever else runs on the machine: the reading includes at least what the neighbour itself used."""
    from modelzoo.engine.bench import busy_neighbours

    tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    with busy_neighbours(1) as (neighbour,):
        time.sleep(0.3)
        cpu, used_before, start = threads.HostCpu(), cpu_seconds(neighbour.pid), time.monotonic()
        time.sleep(1.5)
        others = cpu.others()
        used = (cpu_seconds(neighbour.pid) - used_before) / (time.monotonic() - start)
    assert others is not None and used > 0.1
    assert others >= used - 0.15


def test_the_engine_thread_computes_with_the_governors_count(packed_tiny, torch_threads):
    torch.set_num_threads(2)
    governor = threads.ThreadGovernor(cores=2, shared=False, measure=lambda: 1.0, interval_s=0)
    engine = Engine(packed_tiny, max_batch_size=1, max_seq_len=32, governor=governor)
    seen = []
    try:
        engine.generate([1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True),
                        on_token=lambda _token: seen.append(torch.get_num_threads()))
    finally:
        engine.close()
    assert governor.threads == 1 and seen[-1] == 1


def test_the_governor_starts_as_on_a_quiet_host_whatever_the_load_average(torch_threads, monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.9, 1.9, 1.9))  # a minute of history, ours included
    assert threads.ThreadGovernor(cores=2, shared=False, measure=Readings()).start() == 2 == torch.get_num_threads()
    assert threads.ThreadGovernor(cores=2, shared=True, measure=Readings()).start() == 1 == torch.get_num_threads()
    assert threads.ThreadGovernor(3, cores=2, shared=False, measure=Readings()).start() == 3 == torch.get_num_threads()


def test_host_cpu_counts_only_the_cpus_this_process_may_run_on(tmp_path):
    stat = tmp_path / "stat"
    line = "cpu{} {} 0 0 1000 0 0 0 0 0 0\n"
    stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + line.format(0, 0) + line.format(1, 0) + line.format(2, 0))
    cpu = threads.HostCpu(str(stat), cpus={0, 1})
    tick = os.sysconf("SC_CLK_TCK")
    stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + line.format(0, tick) + line.format(1, 0) + line.format(2, 50 * tick))
    time.sleep(0.5)
    others = cpu.others()  # cpu0 busy for a second's worth of ticks; cpu2's work is not ours to count
    assert others is not None and 0.5 < others < 2.5
