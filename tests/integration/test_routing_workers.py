"""Two real workers, three tiny checkpoints, room for two per worker: jobs go where their checkpoint is.

Counts the loads the workers log and compares them with what two recency-only (LRU) workers would do when
fed the same jobs without routing (alternately). Also: a message left in the queue of a checkpoint nobody
holds (its holder died or evicted it) is swept to the default queue and runs.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from pathlib import Path

import pytest
from django.db import connection

from generation import services
from generation.fleet import queues, registry
from generation.models import Job
from llmsite import redis_client
from modelzoo import pool
from modelzoo.models import Checkpoint
from tests.live_services import WorkerProcess, database_url
from tests.modelzoo.gguf_factory import write_tiny_gguf

pytestmark = pytest.mark.django_db(transaction=True)

FIRST_WAVE = ["a", "b", "c", "a", "b", "c", "c", "a", "b"]  # submitted at once, before anything is loaded
SECOND_WAVE = ["b", "c", "a", "a", "c", "b"]  # submitted once every checkpoint is resident somewhere
LOADING = re.compile(r"Loading checkpoint (tiny-\w+) from")


def recency_only_loads(sequence: list[str], *, workers: int = 2, capacity: int = 2) -> int:
    """Loads made by `workers` LRU caches of `capacity` checkpoints each, job i going to worker i % workers."""
    caches = [OrderedDict() for _ in range(workers)]
    loads = 0
    for index, label in enumerate(sequence):
        cache = caches[index % workers]
        if label in cache:
            cache.move_to_end(label)
            continue
        loads += 1
        cache[label] = True
        if len(cache) > capacity:
            cache.popitem(last=False)
    return loads


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Checkpoint]:
    rows = {}
    for seed, label in enumerate("abcd"):
        path = write_tiny_gguf(tmp_path / f"{label}.gguf", seed=seed)
        rows[label] = Checkpoint.objects.create(name=f"tiny-{label}", format=Checkpoint.Format.GGUF, path=str(path),
                                                status=Checkpoint.Status.READY)
    return rows


def start_workers(tiny: dict[str, Checkpoint], *names: str) -> list[WorkerProcess]:
    """Real workers whose memory budget fits two of the tiny checkpoints (not three), nothing preloaded."""
    need = pool.estimated_bytes(tiny["a"])  # the same settings as the workers': they inherit this environment
    env = {"WORKER_MEMORY_BUDGET_BYTES": str(2 * need + need // 2), "WORKER_PRELOAD_DEFAULT": "false"}
    redis_client.client().flushdb()
    workers = [WorkerProcess(database_url(connection.settings_dict), name=name, env=env) for name in names]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while len(registry.live_names()) < len(workers):
            assert time.monotonic() < deadline, [worker.log()[-2000:] for worker in workers]
            time.sleep(0.2)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


@pytest.fixture
def two_workers(tiny):
    workers = start_workers(tiny, "router1", "router2")
    yield workers
    for worker in workers:
        worker.stop()


@pytest.fixture
def one_worker(tiny):
    [worker] = start_workers(tiny, "sweeper1")
    yield worker
    worker.stop()


def submit(owner, checkpoint: Checkpoint) -> Job:
    return services.job_create(owner=owner, task="qa", prompt="Anything?", checkpoint=checkpoint, max_tokens=8)


def logs(workers: list[WorkerProcess]) -> dict[str, str]:
    return {worker.name: worker.log() for worker in workers}


def test_it_routes_jobs_to_resident_checkpoints_with_fewer_loads_than_recency_only(
    two_workers, tiny, owner, wait_for_job, client
):
    first = [submit(owner, tiny[label]) for label in FIRST_WAVE]
    for job in first:
        finished = wait_for_job(job.pk)
        assert finished.status == Job.Status.SUCCEEDED, (finished.error, logs(two_workers))
    before_second = {worker.name: len(worker.log()) for worker in two_workers}

    # The web side now sends each checkpoint's jobs to its queue, which its holder consumes.
    assert {queues.queue_for_new_job(checkpoint_id=tiny[label].pk) for label in "abc"} == {
        f"checkpoint.{tiny[label].pk}" for label in "abc"}
    second = [submit(owner, tiny[label]) for label in SECOND_WAVE]
    for job in second:
        finished = wait_for_job(job.pk)
        assert finished.status == Job.Status.SUCCEEDED, (finished.error, logs(two_workers))

    texts = logs(two_workers)
    loads = {name: LOADING.findall(text) for name, text in texts.items()}
    ours = sum(len(names) for names in loads.values())
    baseline = recency_only_loads(FIRST_WAVE + SECOND_WAVE)
    print(f"loads: routed {ours} {loads}, recency-only without routing {baseline}")
    assert ours < baseline, (loads, baseline)
    # Each checkpoint was loaded once in all: no load happened while another worker held that checkpoint,
    # so no job waited for a load that a worker holding its checkpoint could have spared it.
    loaded = sorted(name for names in loads.values() for name in names)
    assert loaded == ["tiny-a", "tiny-b", "tiny-c"], texts
    assert not any("Evicting checkpoint" in text for text in texts.values())
    # The second wave was routed by the web side straight to the holders' queues: nothing was passed on.
    for worker in two_workers:
        assert "forwarded to" not in worker.log()[before_second[worker.name]:], worker.log()

    # What the workers publish, as /healthz shows it: resident checkpoints, memory, loads, queue depths.
    body = client.get("/healthz").json()
    live = {worker["name"].split("@")[0]: worker for worker in body["workers"]["live"]}
    assert set(live) == {"router1", "router2"}, body
    resident = sorted(c["name"] for worker in live.values() for c in worker["resident"])
    assert resident == ["tiny-a", "tiny-b", "tiny-c"], body
    for name, worker in live.items():
        expected = [c["name"] for c in worker["resident"]]
        assert sorted(loads[name]) == sorted(expected), (name, loads, worker)
        assert worker["loads"] == len(loads[name])
        assert 0 < worker["memory_used_bytes"] <= worker["memory_budget_bytes"]
    assert body["queues"]["celery"] == 0


def test_it_runs_a_job_left_in_the_queue_of_a_checkpoint_nobody_holds(one_worker, tiny, owner, wait_for_job):
    from generation.tasks import send_run_job

    with pytest.MonkeyPatch.context() as patch:  # created without a message: it is published by hand below
        patch.setattr(services, "job_enqueue", lambda *, job: True)
        job = submit(owner, tiny["d"])
    stranded = f"checkpoint.{tiny['d'].pk}"  # as if the worker that held tiny-d had died after the routing
    send_run_job(job.pk, queue=stranded)

    finished = wait_for_job(job.pk, timeout_s=120)
    assert finished.status == Job.Status.SUCCEEDED, (finished.error, one_worker.log()[-3000:])
    assert f"Moved 1 message(s) from {stranded}" in one_worker.log()
    assert LOADING.findall(one_worker.log()) == ["tiny-d"]
