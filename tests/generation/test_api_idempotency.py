"""The Idempotency-Key header of /v1: the same key from the same user gets the jobs the first request made
(its reply, or its stream replayed) instead of new ones. No worker runs: jobs end as test_api_errors'
`worker_ends_jobs` leaves them."""
from __future__ import annotations

import json

import pytest

from generation import services, streams
from generation.api import idempotency
from generation.models import Job
from llmsite import redis_client
from tests.generation import test_api_errors as base
from tests.generation.test_api_errors import CHAT, error_of, events

# The fixtures of the error tests: an API key, a request poster, a chat body, jobs that end at once.
secret, post, chat = base.secret, base.post, base.chat
live_worker, worker_ends_jobs = base.live_worker, base.worker_ends_jobs

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]

KEY = {"Idempotency-Key": "order-42"}


@pytest.fixture
def answered(worker_ends_jobs) -> None:
    worker_ends_jobs(status=Job.Status.SUCCEEDED, output="Paris.", finish_reason="stop", text="Paris.")


def test_it_answers_the_same_key_with_the_same_job(post, chat, answered, owner):
    first = post(CHAT, chat, **KEY)
    second = post(CHAT, chat, **KEY)
    assert first.status_code == second.status_code == 200
    job = Job.objects.get(owner=owner)
    assert first["X-Job-Ids"] == second["X-Job-Ids"] == str(job.pk)
    assert first.json() == second.json()
    assert second.json()["choices"][0]["message"]["content"] == "Paris."
    assert "Idempotent-Replayed" not in first and second["Idempotent-Replayed"] == "true"
    assert post(CHAT, chat, **{"Idempotency-Key": "order-43"})["X-Job-Ids"] != str(job.pk)
    assert Job.objects.count() == 2


def test_it_keeps_keys_apart_per_user(post, chat, answered, client, other):
    mine = post(CHAT, chat, **KEY)
    other_secret = services.api_key_create(owner=other, name="theirs")[1]
    theirs = client.post(CHAT, data=json.dumps(chat), content_type="application/json",
                         headers={"Authorization": f"Bearer {other_secret}", **KEY})
    assert theirs.status_code == 200 and theirs["X-Job-Ids"] != mine["X-Job-Ids"]
    assert Job.objects.get(owner=other).pk == int(theirs["X-Job-Ids"])


def test_it_answers_422_for_a_key_reused_with_another_request(post, chat, answered):
    post(CHAT, chat, **KEY)
    error = error_of(post(CHAT, {**chat, "max_tokens": 5}, **KEY), 422)
    assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert error_of(post("/v1/completions", {"model": chat["model"], "prompt": "hi"}, **KEY), 422)
    assert Job.objects.count() == 1


def test_it_answers_409_with_retry_after_while_the_first_request_is_creating(post, chat, answered, owner):
    name = idempotency._redis_key(user_id=owner.pk, key=KEY["Idempotency-Key"])
    claim = {"fingerprint": idempotency.fingerprint(task="chat", body=chat), "job_ids": None}
    redis_client.client().set(name, json.dumps(claim), ex=idempotency.CLAIM_TTL_S)
    response = post(CHAT, chat, **KEY)
    assert error_of(response, 409)["code"] == "idempotency_key_in_use" and response["Retry-After"] == "1"
    assert Job.objects.count() == 0


def test_it_frees_a_key_whose_request_made_no_job(post, chat, answered, settings, make_job):
    settings.API_MAX_ACTIVE_JOBS_PER_USER = 1
    running = make_job(status=Job.Status.RUNNING)
    assert error_of(post(CHAT, chat, **KEY), 429)
    Job.objects.filter(pk=running.pk).update(status=Job.Status.SUCCEEDED)
    response = post(CHAT, chat, **KEY)
    assert response.status_code == 200 and "Idempotent-Replayed" not in response


def test_it_frees_a_key_whose_jobs_the_user_deleted(post, chat, answered):
    first = post(CHAT, chat, **KEY)
    services.job_delete(job=Job.objects.get())
    second = post(CHAT, chat, **KEY)
    assert second.status_code == 200 and second["X-Job-Ids"] != first["X-Job-Ids"]
    assert "Idempotent-Replayed" not in second


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_it_replays_a_stream_whose_tokens_expired_from_the_stored_output(post, chat, answered):
    body = {**chat, "stream": True}
    first = events(post(CHAT, body, **KEY))
    job = Job.objects.get()
    redis_client.client().delete(streams.tokens_key(job.pk))  # past STREAM_TTL_S
    second = post(CHAT, body, **KEY)
    assert second["Idempotent-Replayed"] == "true" and second["X-Job-Ids"] == str(job.pk)
    replayed = events(second)

    def text(chunks: list[dict]) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    assert text(first) == text(replayed) == "Paris."
    assert replayed[-1]["choices"][0]["finish_reason"] == "stop"
    assert Job.objects.count() == 1


@pytest.mark.parametrize("value", ["", "x" * 256])
def test_it_answers_400_for_an_empty_or_overlong_key(post, chat, value):
    error = error_of(post(CHAT, chat, **{"Idempotency-Key": value}), 400)
    assert (error["code"], error["param"]) == ("invalid_idempotency_key", "Idempotency-Key")
