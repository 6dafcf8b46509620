"""/v1 answers every problem as OpenAI-shaped JSON with the status and headers a client acts on: bad bodies
(413, 400, 415), quotas (429/503 with Retry-After), Redis lost (503), failed jobs (502/504 that the official
client does not retry) and bugs (500 with an error id that the log carries too). No worker runs here: a
job's end is written into the row and its Redis stream the way a worker would."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace

import pytest
import redis
from django.utils import timezone

from generation import services, streams
from generation.api import idempotency
from generation.api import views as api_views
from generation.fleet import registry
from generation.forms import JobForm
from generation.models import Job
from llmsite import localredis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture
def secret(owner) -> str:
    return services.api_key_create(owner=owner, name="tests")[1]


@pytest.fixture
def post(client, secret) -> Callable:
    def post(path: str, body: object = None, *, raw: bytes | str | None = None,
             content_type: str = "application/json", **headers: str):
        data = raw if raw is not None else json.dumps(body)
        return client.post(path, data=data, content_type=content_type,
                           headers={"Authorization": f"Bearer {secret}", **headers})

    return post


@pytest.fixture
def chat(checkpoint) -> dict:
    return {"model": checkpoint.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def live_worker(monkeypatch) -> None:
    """A worker counts as alive (its heartbeat), though none runs."""
    monkeypatch.setattr(registry, "live_count", lambda: 1)


@pytest.fixture
def worker_ends_jobs(monkeypatch, live_worker) -> Callable:
    """Make every job the API creates end at once as a worker would leave it: `fields` on the row, `text`
    streamed, then the stream's end entry."""

    def install(*, text: str = "", **fields) -> None:
        real_create = services.job_create

        def job_create(**kwargs):
            job = real_create(**kwargs)  # the returned object stays `queued`, as when it was just enqueued
            Job.objects.filter(pk=job.pk).update(finished_at=timezone.now(), **fields)
            streams.stream_start(job_id=job.pk, attempt=1)
            if text:
                streams.stream_append(job_id=job.pk, text=text)
            streams.stream_end(job_id=job.pk, status=fields["status"])
            return job

        monkeypatch.setattr(services, "job_create", job_create)

    return install


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def events(response) -> list[dict]:
    content = b"".join(response).decode()  # the async stream, consumed by the test client
    return [json.loads(line[len("data: "):]) for line in content.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


# --- the request body --------------------------------------------------------------------------------------


def test_it_answers_413_for_a_body_over_the_size_limit(post, chat, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    chat["messages"][0]["content"] = "x" * 2000
    error = error_of(post(CHAT, chat), 413)
    assert error["code"] == "request_too_large" and "1000 bytes" in error["message"]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("raw", [
    b'{"model": "m", "messages": [',
    b"\xff\xfe not json",
    b'{"seed": 1' + b"9" * 5000 + b"}",  # past Python's 4300-digit limit on int()
])
def test_it_answers_400_for_a_body_that_is_not_json(post, raw):
    error = error_of(post(CHAT, raw=raw), 400)
    assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("depth", [20_000, 100])
def test_it_answers_400_for_json_nested_too_deeply(post, chat, depth):
    # 20,000 levels make json.loads give up (RecursionError); 100 parse but pass MAX_JSON_DEPTH.
    raw = json.dumps(chat)[:-1] + ', "metadata": ' + "[" * depth + "]" * depth + "}"
    error = error_of(post(CHAT, raw=raw), 400)
    assert error["code"] == "invalid_json" and "too deeply" in error["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_it_answers_415_for_a_body_that_is_not_sent_as_json(post, chat, content_type):
    error = error_of(post(CHAT, chat, content_type=content_type), 415)
    assert error["code"] == "unsupported_media_type" and content_type in error["message"]


def test_it_takes_json_with_a_charset(post, chat):
    # Gets past the body checks to the quotas (no worker: 503), so the charset was accepted.
    assert post(CHAT, chat, content_type="application/json; charset=utf-8").status_code == 503


@pytest.mark.parametrize("path, field, param", [
    (CHAT, {"messages": [{"role": "user", "content": "bad \ud800 text"}]}, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
     "messages[0].content[0].text"),
    (COMPLETIONS, {"prompt": "bad \ud800"}, "prompt"),
    (COMPLETIONS, {"prompt": "ok", "stop": ["fine", "\ud83d"]}, "stop[1]"),
    (COMPLETIONS, {"prompt": "ok", "model": "\ud800"}, "model"),
])
def test_it_answers_400_naming_a_string_that_is_not_valid_unicode(post, checkpoint, path, field, param):
    body = {"model": checkpoint.name, "messages": [{"role": "user", "content": "hi"}], **field}
    raw = json.dumps(body)  # ensure_ascii: the lone surrogate travels as its \uXXXX escape, as JSON allows
    assert "\\ud" in raw
    error = error_of(post(path, raw=raw), 400)
    assert error["param"] == param and "not valid Unicode" in error["message"]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("path, field, param", [
    (CHAT, {"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": "a\u0000b"}]},
     "messages[1].content"),
    (COMPLETIONS, {"prompt": "a\u0000b"}, "prompt"),
    (COMPLETIONS, {"prompt": "ok", "stop": "\u0000"}, "stop"),
])
def test_it_answers_400_naming_a_string_with_a_nul_character_as_the_form_does(post, checkpoint, path, field,
                                                                               param):
    body = {"model": checkpoint.name, "messages": [{"role": "user", "content": "hi"}], **field}
    error = error_of(post(path, body), 400)
    assert error["param"] == param
    form = JobForm({"task": "qa", "prompt": "a\x00b"})
    assert not form.is_valid()
    assert form.errors["prompt"] == ["Null characters are not allowed."]
    assert error["message"] == f"Invalid '{param}': Null characters are not allowed."
    assert Job.objects.count() == 0


def test_it_answers_405_with_the_allowed_methods(client, secret):
    response = client.get(CHAT, headers={"Authorization": f"Bearer {secret}"})
    error = error_of(response, 405)
    assert error["code"] == "method_not_allowed" and response["Allow"] == "POST"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions/", "/v1/"])
def test_it_answers_404_json_for_an_unknown_url(client, path):
    error = error_of(client.post(path, data="{}", content_type="application/json"), 404)
    assert error["code"] == "unknown_url" and path in error["message"]


# --- quotas: 429 and 503 with Retry-After --------------------------------------------------------------------


def test_it_answers_429_with_the_seconds_until_the_rate_window_frees_a_slot(post, chat, make_job, settings):
    settings.API_RATE_LIMIT_PER_MIN = 3
    oldest, *others = [make_job(source="api", status="succeeded") for _ in range(3)]
    now = timezone.now()
    Job.objects.filter(pk=oldest.pk).update(created_at=now - timedelta(seconds=50))
    Job.objects.filter(pk__in=[job.pk for job in others]).update(created_at=now - timedelta(seconds=10))
    response = post(CHAT, chat)
    error = error_of(response, 429)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert 9 <= int(response["Retry-After"]) <= 11  # the oldest job leaves the minute in ~10 s
    assert Job.objects.count() == 3


def test_it_answers_429_with_retry_after_for_too_many_unfinished_jobs(post, chat, make_job, settings):
    settings.API_MAX_ACTIVE_JOBS_PER_USER = 1
    make_job(status=Job.Status.RUNNING)
    response = post(CHAT, chat)
    assert error_of(response, 429)["code"] == "rate_limit_exceeded"
    assert response["Retry-After"] == "5"


def test_it_answers_429_with_retry_after_when_the_queue_is_full(post, chat, make_job, other, settings):
    settings.QUEUE_MAX_LENGTH = 1
    make_job(owner=other)
    response = post(CHAT, chat)
    assert error_of(response, 429)["code"] == "queue_full"
    assert response["Retry-After"] == "5"


def test_it_answers_503_with_retry_after_when_no_worker_is_alive(post, chat):
    response = post(CHAT, chat)
    error = error_of(response, 503)
    assert (error["code"], error["type"]) == ("no_worker", "server_error")
    assert response["Retry-After"] == "10"
    assert Job.objects.count() == 0


# --- Redis lost mid-request ---------------------------------------------------------------------------------


@pytest.fixture
def redis_down(monkeypatch) -> None:
    """The Idempotency-Key store's Redis client points at a port nobody listens on."""
    dead = redis.Redis(port=localredis.free_port(), socket_connect_timeout=1)
    monkeypatch.setattr(idempotency, "redis_client", SimpleNamespace(client=lambda: dead))


@pytest.mark.parametrize("key, should_retry", [(None, "false"), ("k1", None)])
def test_it_answers_503_with_retry_after_when_redis_drops_while_following_the_jobs(post, chat, live_worker,
                                                                                  monkeypatch, key, should_retry):
    async def read_events(**kwargs):
        raise redis.exceptions.ConnectionError("Connection closed by server.")
        yield  # an async generator, as streams.read_events is

    monkeypatch.setattr(streams, "read_events", read_events)
    response = post(CHAT, chat, **({"Idempotency-Key": key} if key else {}))
    error = error_of(response, 503)
    assert (error["code"], response["Retry-After"]) == ("service_unavailable", "10")
    job = Job.objects.get()
    assert response["X-Job-Ids"] == str(job.pk) and job.status == Job.Status.QUEUED  # it goes on
    # Its job exists: a retry would make another, unless its Idempotency-Key brings this one back.
    assert response.headers.get("x-should-retry") == should_retry


def test_it_answers_503_when_redis_is_unreachable_for_an_idempotency_key(post, chat, live_worker, redis_down):
    response = post(CHAT, chat, **{"Idempotency-Key": "k1"})
    assert error_of(response, 503)["code"] == "service_unavailable" and response["Retry-After"] == "10"
    assert Job.objects.count() == 0


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_it_ends_a_started_stream_with_an_error_chunk_when_redis_drops(post, chat, live_worker, monkeypatch):
    async def read_events(*, job_ids, **kwargs):
        yield job_ids[0], "1-0", "start", "1"
        yield job_ids[0], "1-1", "t", "Hel"
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(streams, "read_events", read_events)
    response = post(CHAT, {**chat, "stream": True})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    *chunks, last = events(response)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hel"]
    assert last["error"]["code"] == "service_unavailable" and last["error"]["type"] == "server_error"
    assert Job.objects.get().status == Job.Status.QUEUED  # not the client's doing: the job runs on


# --- failed jobs: no retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, status", [
    ({"error": "time limit exceeded (60 s)", "finish_reason": "timeout"}, 504),
    ({"error": "worker lost 3 times; giving up"}, 502),
])
def test_it_answers_a_failed_job_with_an_error_the_client_does_not_retry(post, chat, worker_ends_jobs, fields,
                                                                         status):
    worker_ends_jobs(status=Job.Status.FAILED, **fields)
    response = post(CHAT, chat)
    error = error_of(response, status)
    assert (error["code"], error["type"]) == ("job_failed", "server_error")
    assert fields["error"] in error["message"]
    assert response["x-should-retry"] == "false"
    assert response["X-Job-Ids"] == str(Job.objects.get().pk)


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_it_ends_the_stream_of_a_failed_job_with_its_error(post, chat, worker_ends_jobs):
    worker_ends_jobs(status=Job.Status.FAILED, error="time limit exceeded (60 s)", finish_reason="timeout",
                     text="Par")
    *_, last = events(post(CHAT, {**chat, "stream": True}))
    assert last["error"]["code"] == "job_failed" and "time limit" in last["error"]["message"]


# --- bugs: 500 with an error id -----------------------------------------------------------------------------


def test_it_answers_500_json_with_an_error_id_that_the_log_has_with_the_traceback(post, chat, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(api_views, "parse_request", broken)
    with caplog.at_level(logging.ERROR, logger="generation.api"):
        response = post(CHAT, chat)
    error = error_of(response, 500)
    assert (error["code"], error["type"]) == ("internal_error", "server_error")
    error_id = re.search(r"error id ([0-9a-f]{12})", error["message"]).group(1)
    assert "something inside broke" not in error["message"]  # the details stay in the log
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is RuntimeError
    assert "x-should-retry" not in response  # a bug may be passing: the client may try again


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_it_ends_a_started_stream_with_an_error_chunk_naming_a_logged_id(post, chat, live_worker, monkeypatch,
                                                                        caplog):
    async def read_events(*, job_ids, **kwargs):
        yield job_ids[0], "1-1", "t", "Hel"
        raise KeyError("a bug while streaming")

    monkeypatch.setattr(streams, "read_events", read_events)
    with caplog.at_level(logging.ERROR, logger="generation.api"):
        *_, last = events(post(CHAT, {**chat, "stream": True}))
    assert (last["error"]["code"], last["error"]["type"]) == ("internal_error", "server_error")
    error_id = re.search(r"error id ([0-9a-f]{12})", last["error"]["message"]).group(1)
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info[0] is KeyError
