"""runner.job_run: output, token counts and timings stored; every failure ends the job failed with a reason."""
from __future__ import annotations

import contextlib
import threading
import time

import pytest
from django.db import connection

from generation import runner
from generation.models import Job
from tests.generation.fakes import FakeEngine, FakeInfo, FakeResult, push_text

pytestmark = pytest.mark.django_db


@pytest.fixture
def info(monkeypatch) -> FakeInfo:
    info = FakeInfo()
    monkeypatch.setattr("modelzoo.pool.checkpoint_info", lambda checkpoint: info)
    return info


def use_engine(monkeypatch, engine) -> None:
    monkeypatch.setattr("modelzoo.pool.serving", lambda checkpoint: contextlib.nullcontext(engine))


def test_it_stores_output_tokens_and_timings(make_job, monkeypatch, info):
    engine = FakeEngine(FakeResult(text="Paris.", prompt_token_ids=[1] * 9, token_ids=[5, 6, 7, 8, 9],
                                   ttft_s=0.5, elapsed_s=2.5, batch_size=4))
    use_engine(monkeypatch, engine)
    job = make_job()
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.output == "Paris."
    assert job.error == ""
    assert (job.prompt_tokens, job.completion_tokens, job.batch_size) == (9, 5, 4)
    assert job.finish_reason == "stop"
    assert job.ttft() is not None and job.ttft() >= 0
    assert job.tokens_per_s() == pytest.approx(4 / 2.0)
    assert job.started_at <= job.first_token_at <= job.finished_at


def test_it_sends_the_built_prompt_and_sampling_params(make_job, monkeypatch, info):
    engine = FakeEngine()
    use_engine(monkeypatch, engine)
    job = make_job(task=Job.Task.CODE, prompt="fizzbuzz", options={"language": "go"}, temperature=0.7,
                   top_p=0.9, top_k=20, max_tokens=33, seed=42, repetition_penalty=1.2)
    runner.job_run(job_id=job.pk)
    (call,) = engine.calls
    assert info.chat_template.rendered[-1][0]["content"].startswith("You are an expert Go programmer.")
    assert call["prompt_ids"] == info.tokenizer.encode(
        info.chat_template.render(info.chat_template.rendered[-1]))
    params = call["params"]
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens, params.seed,
            params.repetition_penalty) == (0.7, 0.9, 20, 33, 42, 1.2)


def test_it_gives_the_engine_the_time_limit_as_deadline(make_job, monkeypatch, info, settings):
    settings.JOB_TIME_LIMIT_S = 5
    engine = FakeEngine()
    use_engine(monkeypatch, engine)
    before = time.monotonic()
    runner.job_run(job_id=make_job().pk)
    (call,) = engine.calls
    assert before + 5 <= call["deadline"] <= time.monotonic() + 5


def test_it_fails_a_job_that_hit_the_time_limit(make_job, monkeypatch, info, settings):
    settings.JOB_TIME_LIMIT_S = 5
    use_engine(monkeypatch, FakeEngine(FakeResult(text="Par", finish_reason="timeout")))
    job = make_job()
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "time limit exceeded (5 s)"
    assert job.output == "Par"
    assert job.finished_at is not None


def test_it_fails_with_the_reason_when_the_engine_raises(make_job, monkeypatch, info):
    def boom(**call):
        raise RuntimeError("CUDA out of memory")

    use_engine(monkeypatch, FakeEngine(behaviour=boom))
    job = make_job()
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "RuntimeError: CUDA out of memory"
    assert job.finished_at is not None


def test_it_fails_with_the_reason_when_the_checkpoint_cannot_load(make_job, monkeypatch, info):
    def cannot_load(checkpoint):
        raise FileNotFoundError("no such file: /models/x.gguf")

    monkeypatch.setattr("modelzoo.pool.serving", cannot_load)
    job = make_job()
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "no such file" in job.error


@pytest.mark.django_db(transaction=True)
def test_it_stops_generating_when_the_job_is_cancelled(make_job, monkeypatch, info):
    """The cancel arrives from another connection while the engine runs; the engine is told to stop."""
    job = make_job()

    def cancelled_midway(*, on_token, should_cancel, **call):
        push_text(on_token, "Par")
        Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED)  # as services.job_cancel would
        connection.close()  # this thread's own connection
        deadline = time.monotonic() + 10
        while not should_cancel() and time.monotonic() < deadline:
            time.sleep(0.05)
        return FakeResult(text="Par", token_ids=[1], finish_reason="cancelled" if should_cancel() else "stop")

    engine = FakeEngine(behaviour=cancelled_midway)
    use_engine(monkeypatch, engine)
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_S", 0.05)
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert engine.calls[0]["should_cancel"]() is True
    assert job.status == Job.Status.CANCELLED
    assert job.output == "Par" or job.output == ""


@pytest.mark.django_db(transaction=True)
def test_it_saves_partial_output_while_running(make_job, monkeypatch, info):
    job = make_job()
    seen: list[str] = []
    release = threading.Event()

    def slow(*, on_token, **call):
        push_text(on_token, "Hello")
        release.wait(5)
        push_text(on_token, " world")
        return FakeResult(text="Hello world", token_ids=[1, 2])

    use_engine(monkeypatch, FakeEngine(behaviour=slow))
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_S", 0.05)
    original = runner._job_progress_save

    def spy(**kwargs):
        saved = original(**kwargs)
        seen.append(Job.objects.get(pk=job.pk).output)
        release.set()
        return saved

    monkeypatch.setattr(runner, "_job_progress_save", spy)
    runner.job_run(job_id=job.pk)
    assert "Hello" in seen
    job.refresh_from_db()
    assert (job.status, job.output) == (Job.Status.SUCCEEDED, "Hello world")


@pytest.mark.slow
def test_it_runs_a_job_with_the_bundled_model(make_job):
    """The real engine through the pool: greedy, a few tokens."""
    job = make_job(task=Job.Task.QA, prompt="What is 2 + 2?", max_tokens=8, temperature=0.0)
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.output.strip()
    assert 1 <= job.completion_tokens <= 8
    assert job.prompt_tokens > 10
    assert job.batch_size >= 1
    assert job.ttft() is not None and job.ttft() >= 0
