"""The job's token stream end to end: uvicorn (async SSE views) + Redis + a real worker."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.test import Client

from generation import services, streams
from generation.models import Job
from llmsite import redis_client
from tests.live_services import WorkerProcess, database_url

pytestmark = pytest.mark.django_db(transaction=True)



@pytest.fixture
def session_cookie(owner) -> dict[str, str]:
    client = Client()
    client.force_login(owner)
    return {"sessionid": client.cookies["sessionid"].value}


def read_sse(url: str, cookies: dict[str, str]) -> tuple[str, dict]:
    """Follow one job stream like EventSource would: (text from the tokens, the end event's job)."""
    text, event = "", None
    with httpx.stream("GET", url, cookies=cookies, timeout=180) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "start":
                    text = ""
                elif event == "token":
                    text += data["text"]
                elif event == "end":
                    return text, data
    raise AssertionError("stream ended without an end event")


def create_job(owner, checkpoint, **fields) -> Job:
    values = dict(owner=owner, task="qa", prompt="Tell me a story about a dragon.", checkpoint=checkpoint,
                  max_tokens=32, temperature=0.0)
    values.update(fields)
    return services.job_create(**values)


def test_it_answers_404_to_another_users_stream(web, owner, other, checkpoint):
    job = Job.objects.create(owner=owner, task="qa", prompt="x", checkpoint=checkpoint)
    client = Client()
    client.force_login(other)
    response = httpx.get(f"{web.url}/jobs/{job.pk}/stream", cookies={"sessionid": client.cookies["sessionid"].value})
    assert response.status_code == 404
    assert httpx.get(f"{web.url}/jobs/{job.pk}/stream").status_code == 302


def test_it_streams_the_whole_text_to_50_concurrent_clients(web, warm_worker, owner, checkpoint, session_cookie):
    job = create_job(owner, checkpoint)
    url = f"{web.url}/jobs/{job.pk}/stream"
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: read_sse(url, session_cookie), range(50)))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.output
    assert all(text == job.output for text, _ in results)
    assert all(end["output"] == job.output and end["status"] == "succeeded" for _, end in results)
    # A page opened after the end replays the stream as well.
    assert read_sse(url, session_cookie)[0] == job.output


def test_it_stops_a_running_job_within_a_decode_step_keeping_its_text(warm_worker, owner, checkpoint,
                                                                       wait_for_job):
    job = create_job(owner, checkpoint, max_tokens=512)  # seconds of work: it is stopped, not finished
    key = streams.tokens_key(job.pk)
    deadline = time.monotonic() + 120
    while sum(1 for _, f in redis_client.client().xrange(key) if b"t" in f) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert services.job_cancel(job=job)
    # Counted from the publish: the step in flight ends with its token, and one more may start while the
    # message crosses to the engine's thread (a step is ~10 ms on a fast CPU, less than a busy thread's wake-up).
    cancelled_ms = int(time.time() * 1000)
    job = wait_for_job(job.pk, until=lambda j: j.finish_reason == "cancelled")
    entries = redis_client.client().xrange(key)
    tokens = [(int(i.split(b"-")[0]), f[b"t"].decode()) for i, f in entries if b"t" in f]
    after = [t for ms, t in tokens if ms > cancelled_ms]
    assert len(after) <= 2, f"{len(after)} tokens after the cancel"
    assert entries[-1][1] == {b"end": b"cancelled"}
    assert job.status == Job.Status.CANCELLED
    assert job.output == "".join(t for _, t in tokens) and job.output
    assert job.completion_tokens < 512


def test_it_never_runs_a_job_cancelled_while_queued(transactional_db, owner, checkpoint):
    from django.db import connection

    redis_client.client().flushdb()
    job = create_job(owner, checkpoint)  # queued: its message waits in Redis, no worker yet
    assert services.job_cancel(job=job)
    worker = WorkerProcess(database_url(connection.settings_dict), name="worker1")
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while "succeeded" not in worker.log():  # the task ran, found nothing to do
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
    finally:
        worker.stop()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.started_at, job.output) == ("cancelled", 0, None, "")
    assert f"Job {job.pk}: nothing to do" in worker.log()
    assert redis_client.client().xrange(streams.tokens_key(job.pk))[-1][1] == {b"end": b"cancelled"}
