"""Open streams are cheap and bounded: 200 concurrent streams of one user each get the text or a 429 (never a
500), other requests keep working meanwhile, and the open-stream count returns to zero (uvicorn + Redis;
run with DATABASE_URL=postgres://... to check that streams do not hold PostgreSQL connections)."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from generation import streams
from generation.models import Job
from llmsite import redis_client

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "Paris is the capital of France."


@pytest.fixture
def finished_job(owner, checkpoint) -> Job:
    job = Job.objects.create(owner=owner, task="qa", prompt="Capital of France?", checkpoint=checkpoint,
                             status=Job.Status.SUCCEEDED, output=TEXT, attempts=1, finished_at=timezone.now())
    streams.stream_start(job_id=job.pk, attempt=1)
    for word in TEXT.split(" "):
        streams.stream_append(job_id=job.pk, text=word if word == "Paris" else " " + word)
    streams.stream_end(job_id=job.pk, status=job.status)
    return job


async def read(client: httpx.AsyncClient, url: str) -> tuple[int, str]:
    text = ""
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.headers.get("Retry-After", "")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "token":
                text += json.loads(line[6:])["text"]
            elif line.startswith("data: ") and event == "end":
                return 200, text
    return 200, text


@pytest.mark.postgres
def test_200_concurrent_streams_get_the_text_or_a_429(web, owner, finished_job):
    client = Client()
    client.force_login(owner)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    url = f"{web.url}/jobs/{finished_job.pk}/stream"

    async def burst() -> tuple[list[tuple[int, str]], list[float]]:
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(cookies=cookies, timeout=60, limits=limits) as session:
            readers = [asyncio.create_task(read(session, url)) for _ in range(200)]
            latencies = []
            while not all(reader.done() for reader in readers):  # other requests go on meanwhile
                started = time.monotonic()
                assert (await session.get(f"{web.url}/jobs/")).status_code == 200
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.05)
            return [reader.result() for reader in readers], latencies

    results, latencies = asyncio.run(burst())
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1
    assert 1 <= statuses.count(200) <= 200 - statuses.count(429)
    assert all(text == TEXT for status, text in results if status == 200)
    assert all(retry == "5" for status, retry in results if status == 429)
    assert max(latencies) < 10
    deadline = time.monotonic() + 30  # each stream is counted down once the server has closed it
    while int(redis_client.client().get(streams.open_streams_key(owner.pk)) or 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert int(redis_client.client().get(streams.open_streams_key(owner.pk)) or 0) == 0
