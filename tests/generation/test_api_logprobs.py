"""Log-probabilities on /v1: `logprobs` + `top_logprobs` (chat) and `logprobs` (completions) bounds-checked with
a 400 naming the parameter, asked of the engine through the job's options, and answered in OpenAI's shapes,
plain and streamed. No worker runs here: a job's end (its row and its stream's `lp` and `t` entries) is
written the way a worker would (generation.runner)."""
from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from django.utils import timezone

from generation import services, streams
from generation.models import Job
from llmsite import redis_client
from tests.generation.test_api_errors import error_of, events, live_worker, post, secret  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

#: Two tokens as the runner stores them: [text, logprob, [[alternative, logprob], ...]]
ENTRIES = [["Hel", -0.25, [["Hel", -0.25], ["Hi", -1.75]]], ["lo é", -0.5, [["lo é", -0.5], ["p", -2.0]]]]


@pytest.fixture
def body(checkpoint) -> Callable:
    def body(path: str, **fields) -> dict:
        if path == CHAT:
            return {"model": checkpoint.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                    **fields}
        return {"model": checkpoint.name, "prompt": "hi", "max_tokens": 4, **fields}

    return body


@pytest.mark.parametrize("path, fields, param", [
    (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    (CHAT, {"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    (CHAT, {"top_logprobs": 3}, "top_logprobs"),
    (CHAT, {"logprobs": 3}, "logprobs"),
    (COMPLETIONS, {"logprobs": 21}, "logprobs"),
    (COMPLETIONS, {"logprobs": True}, "logprobs"),
])
def test_it_answers_400_naming_the_parameter(post, body, path, fields, param):
    error = error_of(post(path, body(path, **fields)), 400)
    assert error["param"] == param
    assert Job.objects.count() == 0


@pytest.fixture
def ends_with_logprobs(monkeypatch, live_worker) -> list[Job]:  # noqa: F811
    """Every job the API creates ends at once with ENTRIES: stored on the row, and streamed as the runner does
    (an `lp` entry before its token's text)."""
    created: list[Job] = []
    real_create = services.job_create

    def job_create(**kwargs):
        job = real_create(**kwargs)
        created.append(job)
        Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, finished_at=timezone.now(),
                                             output="Hello é", finish_reason="stop", completion_tokens=2,
                                             logprobs=ENTRIES)
        streams.stream_start(job_id=job.pk, attempt=1)
        for entry in ENTRIES:
            redis_client.client().xadd(streams.tokens_key(job.pk), {"lp": json.dumps(entry)})
            streams.stream_append(job_id=job.pk, text=entry[0])
        streams.stream_end(job_id=job.pk, status=Job.Status.SUCCEEDED)
        return job

    monkeypatch.setattr(services, "job_create", job_create)
    return created


CHAT_CONTENT = [
    {"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108],
     "top_logprobs": [{"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108]},
                      {"token": "Hi", "logprob": -1.75, "bytes": [72, 105]}]},
    {"token": "lo é", "logprob": -0.5, "bytes": [108, 111, 32, 195, 169],
     "top_logprobs": [{"token": "lo é", "logprob": -0.5, "bytes": [108, 111, 32, 195, 169]},
                      {"token": "p", "logprob": -2.0, "bytes": [112]}]},
]


def test_a_chat_completion_asks_the_engine_and_answers_openais_shape(post, body, ends_with_logprobs):
    reply = post(CHAT, body(CHAT, logprobs=True, top_logprobs=2)).json()
    job = ends_with_logprobs[0]
    assert job.options["logprobs"] == 2 and job.sampling_params().logprobs == 2
    assert reply["choices"][0]["logprobs"] == {"content": CHAT_CONTENT, "refusal": None}


def test_a_chat_completion_without_logprobs_asks_for_none(post, body, ends_with_logprobs):
    reply = post(CHAT, body(CHAT)).json()
    assert "logprobs" not in ends_with_logprobs[0].options and ends_with_logprobs[0].sampling_params().logprobs is None
    assert reply["choices"][0]["logprobs"] is None


def test_a_completion_answers_the_legacy_shape(post, body, ends_with_logprobs):
    reply = post(COMPLETIONS, body(COMPLETIONS, logprobs=0)).json()
    assert ends_with_logprobs[0].sampling_params().logprobs == 0
    assert reply["choices"][0]["logprobs"] == {
        "tokens": ["Hel", "lo é"], "token_logprobs": [-0.25, -0.5],
        "top_logprobs": [{"Hel": -0.25, "Hi": -1.75}, {"lo é": -0.5, "p": -2.0}], "text_offset": [0, 3]}


def test_a_streamed_chat_completion_carries_each_tokens_entries(post, body, ends_with_logprobs):
    chunks = events(post(CHAT, body(CHAT, logprobs=True, top_logprobs=2, stream=True)))
    content = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert [c["delta"]["content"] for c in content] == ["Hel", "lo é"]
    assert [c["logprobs"] for c in content] == [{"content": [e], "refusal": None} for e in CHAT_CONTENT]


def test_a_streamed_completion_carries_each_tokens_entries(post, body, ends_with_logprobs):
    chunks = events(post(COMPLETIONS, body(COMPLETIONS, logprobs=1, stream=True)))
    texts = [c["choices"][0] for c in chunks if c["choices"][0]["text"]]
    assert [c["logprobs"]["tokens"] for c in texts] == [["Hel"], ["lo é"]]
    assert [c["logprobs"]["text_offset"] for c in texts] == [[0], [3]]
