"""Under load: a burst of API requests from two users is held to the per-user cap of unfinished jobs (the rest
refused with 429 and Retry-After) and every admitted job ends; a user with one job
is not stuck behind other users' backlog (workers claim the least-served user's oldest job); and
`manage.py loadtest` measures the site. The site under uvicorn, a real worker with the bundled model, the test
Redis and database."""
from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Count

from generation import services
from generation.models import ApiKey, Job
from tests.live_services import WebProcess, database_url

pytestmark = pytest.mark.django_db(transaction=True)

#: API_MAX_ACTIVE_JOBS_PER_USER of the web process in the burst test (the default is 16).
CAP = 4
BURST_PER_USER = 50
UNFINISHED = [Job.Status.QUEUED, Job.Status.RUNNING]


@pytest.fixture
def capped_web(transactional_db, monkeypatch):
    """The site under uvicorn with API_MAX_ACTIVE_JOBS_PER_USER=CAP (its settings come from its environment)."""
    monkeypatch.setenv("API_MAX_ACTIVE_JOBS_PER_USER", str(CAP))
    process = WebProcess(database_url(connection.settings_dict))
    process.start()
    yield process
    process.stop()


class UnfinishedSampler:
    """Counts each user's queued + running jobs in the database every `interval_s` from a thread of its own,
    keeping the most seen per user."""

    def __init__(self, *, interval_s: float = 0.05) -> None:
        self.interval_s, self.peaks, self.samples = interval_s, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="unfinished-sampler", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                rows = (Job.objects.filter(status__in=UNFINISHED).values("owner_id").annotate(n=Count("id"))
                        .values_list("owner_id", "n"))
                for owner_id, n in rows:
                    self.peaks[owner_id] = max(self.peaks.get(owner_id, 0), n)
                self.samples += 1
                self._stop.wait(self.interval_s)
        finally:
            connection.close()

    def __enter__(self) -> UnfinishedSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def burst(url: str, *, secrets: dict[int, str], per_user: int, body: dict) -> list[tuple[int, httpx.Response]]:
    """`per_user` requests of every user at once (interleaved), each on a connection of its own."""
    pool = httpx.Limits(max_connections=len(secrets) * per_user)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=pool) as client:
        async def one(user_id: int, secret: str) -> tuple[int, httpx.Response]:
            response = await client.post("/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {secret}"})
            return user_id, response

        return await asyncio.gather(*(one(user_id, secret) for _ in range(per_user)
                                      for user_id, secret in secrets.items()))


def test_it_holds_a_burst_of_two_users_to_the_cap_and_refuses_the_rest_with_retry_after(
        capped_web, warm_worker, checkpoint, owner, other):
    secrets = {user.pk: services.api_key_create(owner=user, name="burst")[1] for user in (owner, other)}
    body = {"model": checkpoint.name, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2,
            "temperature": 0}
    with UnfinishedSampler() as sampler:
        answers = asyncio.run(burst(capped_web.url, secrets=secrets, per_user=BURST_PER_USER, body=body))

    statuses = [response.status_code for _, response in answers]
    assert set(statuses) <= {200, 429}, [(r.status_code, r.text[:200]) for _, r in answers
                                         if r.status_code not in (200, 429)]
    assert sampler.samples > 5 and sampler.peaks
    assert max(sampler.peaks.values()) <= CAP, sampler.peaks
    for _, response in answers:
        if response.status_code != 200:
            # 429 for the cap: a request over it is refused before it waits for the admission lock.
            assert response.json()["error"]["code"] == "rate_limit_exceeded", response.text
            assert int(response.headers["retry-after"]) >= 1
    for user_id in secrets:
        accepted = [response for uid, response in answers if uid == user_id and response.status_code == 200]
        job_ids = {int(i) for response in accepted for i in response.headers["x-job-ids"].split(",")}
        assert len(accepted) >= CAP  # nothing else refuses: the first CAP of each user always fit
        assert any(uid == user_id and response.status_code == 429 for uid, response in answers)
        # A refused request makes no job; every admitted one ended, with its answer.
        jobs = Job.objects.filter(owner_id=user_id)
        assert set(jobs.values_list("pk", flat=True)) == job_ids
        assert set(jobs.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}
        assert all(response.json()["usage"]["completion_tokens"] > 0 for response in accepted)
    print(f"\n{statuses.count(200)} admitted, {statuses.count(429)} answered 429; peaks of unfinished jobs per user {sorted(sampler.peaks.values())} (cap {CAP}) over "
          f"{sampler.samples} samples")


def worker_concurrency(worker) -> int:
    """The jobs the worker runs at once, as celery's banner states it (`concurrency: 4 (thread)`)."""
    return int(re.search(r"concurrency: (\d+)", worker.log()).group(1))


def test_it_starts_a_third_users_job_ahead_of_a_backlog_queued_before_it(
        warm_worker, checkpoint, owner, other, django_user_model, wait_for_job):
    concurrency = worker_concurrency(warm_worker)
    third = django_user_model.objects.create_user(username="carol", password="carol-password-1")
    fields = {"task": Job.Task.QA, "prompt": "Name three rivers.", "checkpoint": checkpoint, "max_tokens": 8,
              "temperature": 0.0}
    backlog = [job for user in (owner, other) for job in services.jobs_submit(owner=user, inputs=[fields] * 12)]
    deadline = time.monotonic() + 120
    while not Job.objects.filter(pk__in=[job.pk for job in backlog], status=Job.Status.RUNNING).exists():
        assert time.monotonic() < deadline, "the worker started none of the backlog"
        time.sleep(0.05)

    [job] = services.jobs_submit(owner=third, inputs=[fields])
    job = wait_for_job(job.pk)
    backlog = [wait_for_job(b.pk) for b in backlog]

    assert job.status == Job.Status.SUCCEEDED
    assert {b.status for b in backlog} == {Job.Status.SUCCEEDED}
    waiting = [b for b in backlog if b.started_at > job.created_at]  # queued ahead of it when it came
    overtaking = [b for b in waiting if b.started_at < job.started_at]
    assert len(waiting) >= len(backlog) // 2, "the backlog drained before the third user's job came"
    assert len(overtaking) <= concurrency, (len(overtaking), concurrency)
    print(f"\n{len(waiting)} backlog jobs waiting when the third user's job came; {len(overtaking)} of them "
          f"started before it (worker concurrency {concurrency}); its queue wait {job.queue_wait():.2f} s")


def test_it_measures_the_site_with_manage_py_loadtest(web, warm_worker, checkpoint, django_user_model):
    out = io.StringIO()
    call_command("loadtest", base_url=web.url, users=2, requests=3, concurrency=2, max_tokens=2, stream=True,
                 json=True, stdout=out)
    report = json.loads(out.getvalue())
    assert (report["requests"], report["succeeded"], report["errors"], report["rate_limited"]) == (6, 6, 0, 0)
    assert list(report["users"]) == ["loadtest-1", "loadtest-2"] and report["fairness"] >= 1
    assert 0 < report["ttft_s"]["p50"] <= report["latency_s"]["p50"] <= report["latency_s"]["p99"]
    assert report["output_tokens"] == 6 * 2 and report["requests_per_s"] > 0
    assert Job.objects.filter(owner__username="loadtest-1", source=Job.Source.API,
                              status=Job.Status.SUCCEEDED).count() == 3
    # A second run reuses the users and replaces their keys.
    call_command("loadtest", base_url=web.url, users=1, requests=1, max_tokens=2, stdout=io.StringIO())
    assert django_user_model.objects.filter(username__startswith="loadtest-").count() == 2
    assert ApiKey.objects.filter(owner__username="loadtest-1", revoked_at__isnull=True).count() == 1
