"""The /v1 API with the official `openai` client against the site under uvicorn and a real worker."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from generation import services
from generation.fleet import registry
from llmsite import redis_client
from generation.models import Job

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
                                       max_tokens=10**6)
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


def test_it_answers_404_for_an_unknown_model(client, worker):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-7", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "model_not_found" and error.value.param == "model"


@pytest.mark.parametrize("params, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
])
def test_it_answers_400_naming_the_invalid_parameter(client, model_name, params, param, worker):
    body = {"model": model_name, "messages": [{"role": "user", "content": "hi"}], **params}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**body)
    assert error.value.param == param
    assert Job.objects.count() == 0


def test_it_answers_400_for_a_prompt_longer_than_the_context_window(client, model_name, worker):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=model_name, prompt="word " * 5000, max_tokens=16)
    assert error.value.code == "context_length_exceeded" and error.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=model_name, prompt="hello", max_tokens=100_000)
    assert error.value.code == "context_length_exceeded" and error.value.param == "max_tokens"


def test_it_answers_429_when_the_user_has_too_many_unfinished_jobs(client, model_name, make_job, worker):
    from django.conf import settings

    for _ in range(settings.API_MAX_ACTIVE_JOBS_PER_USER):
        make_job(status=Job.Status.RUNNING)
    with pytest.raises(openai.RateLimitError) as error:
        client.completions.create(model=model_name, prompt="hi", max_tokens=4)
    assert error.value.status_code == 429


def test_it_answers_503_when_no_worker_is_alive(client, model_name):
    redis_client.client().delete(registry.WORKERS_KEY)
    with pytest.raises(openai.InternalServerError) as error:
        client.completions.create(model=model_name, prompt="hi", max_tokens=4)
    assert error.value.status_code == 503
    assert Job.objects.count() == 0


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
