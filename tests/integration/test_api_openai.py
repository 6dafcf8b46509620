"""The /v1 API with the official `openai` client against the site under uvicorn and a real worker."""
from __future__ import annotations

import math
import time

import httpx
import openai
import pytest

from generation import limits, services
from generation.fleet import registry
from generation.models import Job
from llmsite import redis_client
from tests.live_services import WorkerProcess, database_url

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def model_name(checkpoint) -> str:
    return checkpoint.name


@pytest.fixture
def secret(owner) -> str:
    return services.api_key_create(owner=owner, name="tests")[1]


@pytest.fixture
def client(web, secret) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web.url}/v1", api_key=secret, max_retries=0, timeout=120)


def test_it_answers_401_for_a_missing_or_revoked_key(web, secret, model_name, owner):
    bad = openai.OpenAI(base_url=f"{web.url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        bad.models.list()
    assert error.value.status_code == 401 and error.value.code == "invalid_api_key"
    key = owner.api_keys.get()
    services.api_key_revoke(key=key)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{web.url}/v1", api_key=secret, max_retries=0).models.list()
    assert httpx.get(f"{web.url}/v1/models").status_code == 401


def test_it_answers_bad_requests_with_json_under_uvicorn(web, secret, model_name):
    auth = {"Authorization": f"Bearer {secret}"}
    chat = {"model": model_name, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        (413, "request_too_large", {"json": {**chat, "messages": [{"role": "user", "content": "x" * 3_000_000}]}}),
        (415, "unsupported_media_type", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
        (400, "invalid_json", {"content": b"[" * 20_000 + b"]" * 20_000,
                               "headers": {"Content-Type": "application/json"}}),
    ]
    for status, code, request in cases:
        response = httpx.post(f"{web.url}/v1/chat/completions", timeout=60,
                              **{**request, "headers": {**auth, **request.get("headers", {})}})
        assert (response.status_code, response.headers["content-type"]) == (status, "application/json")
        assert response.json()["error"]["code"] == code
    response = httpx.get(f"{web.url}/v1/embeddings", headers=auth)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"


def test_it_answers_503_when_no_worker_is_alive(client, model_name):
    redis_client.client().delete(registry.WORKERS_KEY)
    with pytest.raises(openai.InternalServerError) as error:
        client.completions.create(model=model_name, prompt="hi", max_tokens=4)
    assert error.value.status_code == 503 and error.value.response.headers["retry-after"] == "10"
    assert Job.objects.count() == 0


@pytest.fixture
def hasty_worker(transactional_db, checkpoint):
    """A real worker whose jobs may run for 1 s (JOB_TIME_LIMIT_S), once it holds the model."""
    from django.db import connection

    redis_client.client().flushdb()
    process = WorkerProcess(database_url(connection.settings_dict), name="worker1", env={"JOB_TIME_LIMIT_S": "1"})
    process.start()
    deadline = time.monotonic() + 180
    while "is resident" not in process.log():
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.2)
    yield process
    process.stop()


def test_it_answers_a_job_that_ran_out_of_time_once_without_retries(web, secret, model_name, owner, hasty_worker):
    # The official client with its default retries (2): a 5xx without x-should-retry: false would make 3 jobs.
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=secret, timeout=120)
    assert client.max_retries == 2
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as error:
        client.completions.create(model=model_name, prompt="1, 2, 3, 4, 5,", max_tokens=1000, temperature=0)
    assert error.value.status_code == 504 and error.value.code == "job_failed"
    assert error.value.response.headers["x-should-retry"] == "false"
    assert "time limit exceeded" in error.value.message
    job = Job.objects.get(owner=owner)  # exactly one job: the client did not try again
    assert (job.status, job.finish_reason) == (Job.Status.FAILED, "timeout")
    assert error.value.response.headers["x-job-ids"] == str(job.pk)
    assert time.monotonic() - started < 30  # no retry back-off was waited either


def test_it_lists_ready_models(client, model_name, worker):
    ids = [model.id for model in client.models.list()]
    assert ids == [model_name]


def test_it_answers_a_chat_completion_as_a_job_in_the_history(client, model_name, owner, warm_worker):
    reply = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0, seed=1,
    )
    assert reply.object == "chat.completion"
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    job = Job.objects.get(owner=owner)
    assert (job.task, job.source, job.status, job.output) == ("chat", "api", "succeeded", text)
    assert job.options["messages"] == [{"role": "user", "content": "What is the capital of France?"}]


def test_it_streams_a_chat_completion_whose_deltas_are_the_stored_output(client, model_name, owner, warm_worker):
    # Warm the web process's tokenizer cache (a request refused after counting the prompt's tokens), so the
    # time to the first streamed token below is that of a running site.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=int(limits.MAX_TOKENS.high))
    started = time.monotonic()
    first_token_s = None
    pieces: list[str] = []
    finish = []
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first_token_s = first_token_s or time.monotonic() - started
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    job = Job.objects.get(owner=owner)
    assert job.status == Job.Status.SUCCEEDED
    assert "".join(pieces) == job.output and job.output
    assert len(pieces) > 1 and finish and usage.completion_tokens == job.completion_tokens
    print(f"\nfirst streamed token after {first_token_s:.3f}s (request -> web -> redis -> worker -> redis -> web); "
          f"engine ttft {job.ttft():.3f}s, queue wait {job.queue_wait():.3f}s")


def test_it_completes_a_raw_prompt_and_stops_at_a_stop_string(client, model_name, owner, warm_worker):
    reply = client.completions.create(model=model_name, prompt="1, 2, 3, 4, 5,", max_tokens=24, temperature=0,
                                      stop=[" 8"])
    text = reply.choices[0].text
    job = Job.objects.get(owner=owner)
    assert job.task == "completion" and job.output == text
    assert " 8" not in text and "7" in text
    assert reply.choices[0].finish_reason == "stop"


def test_it_answers_404_for_an_unknown_model(client, worker):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-7", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "model_not_found" and error.value.param == "model"


BAD_PARAMETERS = [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),


]


def test_it_answers_400_naming_the_invalid_parameter(client, model_name, worker):
    """One site and worker for the whole table (each start costs seconds; the cases share nothing)."""
    for params, param in BAD_PARAMETERS:
        body = {"model": model_name, "messages": [{"role": "user", "content": "hi"}], **params}
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(**body)
        assert error.value.param == param, params
    assert Job.objects.count() == 0


def test_it_answers_400_for_a_prompt_longer_than_the_context_window(client, model_name, worker):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=model_name, prompt="word " * 5000, max_tokens=16)
    assert error.value.code == "context_length_exceeded" and error.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as error:
        # Within MAX_TOKENS (so not invalid_value) but past what the context window leaves after the prompt.
        client.completions.create(model=model_name, prompt="hello", max_tokens=int(limits.MAX_TOKENS.high))
    assert error.value.code == "context_length_exceeded" and error.value.param == "max_tokens"


def test_it_answers_429_when_the_user_has_too_many_unfinished_jobs(client, model_name, make_job, worker):
    from django.conf import settings

    for _ in range(settings.API_MAX_ACTIVE_JOBS_PER_USER):
        make_job(status=Job.Status.RUNNING)
    with pytest.raises(openai.RateLimitError) as error:
        client.completions.create(model=model_name, prompt="hi", max_tokens=4)
    assert error.value.status_code == 429 and error.value.response.headers["retry-after"] == "5"


def test_it_cancels_the_job_when_the_client_disconnects_mid_stream(web, secret, model_name, owner, warm_worker,
                                                                   wait_for_job):
    body = {"model": model_name, "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{web.url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.status_code == 200
        job_id = int(response.headers["X-Job-Ids"])
        chunks = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text": ""' not in line:
                chunks += 1
            if chunks >= 3:
                break
    # The disconnect cancels the row at once; the worker then stops and saves the text it had.
    job = wait_for_job(job_id, until=lambda job: job.finish_reason == "cancelled", timeout_s=60)
    assert job.status == Job.Status.CANCELLED
    assert job.output and job.completion_tokens < 64


def test_it_answers_a_repeated_idempotency_key_with_the_first_jobs_reply(client, model_name, owner, warm_worker):
    request = {"model": model_name, "messages": [{"role": "user", "content": "Name a colour."}],
               "max_tokens": 8, "temperature": 0}
    first = client.chat.completions.with_raw_response.create(**request, extra_headers={"Idempotency-Key": "k-1"})
    again = client.chat.completions.with_raw_response.create(**request, extra_headers={"Idempotency-Key": "k-1"})
    job = Job.objects.get(owner=owner)
    assert first.headers["x-job-ids"] == again.headers["x-job-ids"] == str(job.pk)
    assert again.headers["idempotent-replayed"] == "true"
    first, again = first.parse(), again.parse()
    assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content == job.output

    # The same key with another request is refused; a new key makes a new job.
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(**{**request, "max_tokens": 9}, extra_headers={"Idempotency-Key": "k-1"})
    assert error.value.code == "idempotency_key_reused"
    stream = client.chat.completions.create(**request, stream=True, extra_headers={"Idempotency-Key": "k-2"})
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    replay = client.chat.completions.create(**request, stream=True, extra_headers={"Idempotency-Key": "k-2"})
    assert "".join(chunk.choices[0].delta.content or "" for chunk in replay if chunk.choices) == streamed
    assert Job.objects.filter(owner=owner).count() == 2


def test_it_gives_token_logprobs_plain_and_streamed(client, model_name, owner, warm_worker):
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=model_name, messages=messages, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert content and "".join(t.token for t in content).startswith(reply.choices[0].message.content)
    for t in content:
        assert t.logprob <= 0 and t.bytes == list(t.token.encode()) and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob  # greedy: the best
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-6
    stored = Job.objects.get(owner=owner).logprobs
    assert [[e[0], e[1]] for e in stored] == [[t.token, t.logprob] for t in content]

    streamed = []
    for chunk in client.chat.completions.create(model=model_name, messages=messages, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=3, stream=True):
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]

    completion = client.completions.create(model=model_name, prompt="Red, green and", max_tokens=4, temperature=0,
                                           logprobs=2)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 0
    assert all(len(top) <= 2 for top in lp.top_logprobs)

    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model_name, messages=messages, max_tokens=4, logprobs=True,
                                       top_logprobs=21)
    assert exc.value.status_code == 400 and exc.value.body["param"] == "top_logprobs"
