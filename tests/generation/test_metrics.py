"""/metrics: Prometheus text that parses, moves when a job finishes, shows queues and workers; staff or the
METRICS_TOKEN only."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from generation.fleet import registry
from generation.models import Job
from llmsite import redis_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_redis")]


def scrape(client: Client, **headers: str) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples}


def finished_job(make_job, *, wait_s: float, ttft_s: float, tokens: int, decode_s: float) -> Job:
    job = make_job(status=Job.Status.SUCCEEDED, completion_tokens=tokens, decode_s=decode_s)
    created = job.created_at
    Job.objects.filter(pk=job.pk).update(
        started_at=created + timedelta(seconds=wait_s),
        first_token_at=created + timedelta(seconds=wait_s + ttft_s),
        finished_at=created + timedelta(seconds=wait_s + ttft_s + decode_s),
    )
    return job


def test_it_parses_and_has_every_family(staff_client, checkpoint):
    samples = scrape(staff_client)
    names = {name for name, _ in samples}
    assert {"llmsite_jobs", "llmsite_redis_up", "llmsite_queue_depth", "llmsite_workers_live",
            "llmsite_job_queue_wait_seconds_bucket", "llmsite_job_time_to_first_token_seconds_bucket",
            "llmsite_job_decode_tokens_per_second_bucket"} <= names
    assert samples[("llmsite_jobs", (("state", "succeeded"),))] == 0
    assert samples[("llmsite_redis_up", ())] == 1
    assert samples[("llmsite_queue_depth", (("queue", "celery"),))] == 0


def test_it_moves_when_a_job_finishes(staff_client, make_job):
    make_job()  # queued
    before = scrape(staff_client)
    assert before[("llmsite_jobs", (("state", "queued"),))] == 1

    finished_job(make_job, wait_s=0.3, ttft_s=0.2, tokens=33, decode_s=2.0)  # 16 tokens/s
    after = scrape(staff_client)

    assert after[("llmsite_jobs", (("state", "succeeded"),))] == before[("llmsite_jobs", (("state", "succeeded"),))] + 1
    assert after[("llmsite_job_queue_wait_seconds_gcount", ())] == 1
    assert after[("llmsite_job_queue_wait_seconds_gsum", ())] == pytest.approx(0.3)
    assert after[("llmsite_job_queue_wait_seconds_bucket", (("le", "0.25"),))] == 0
    assert after[("llmsite_job_queue_wait_seconds_bucket", (("le", "0.5"),))] == 1
    assert after[("llmsite_job_time_to_first_token_seconds_bucket", (("le", "0.1"),))] == 0
    assert after[("llmsite_job_time_to_first_token_seconds_bucket", (("le", "0.25"),))] == 1
    assert after[("llmsite_job_decode_tokens_per_second_bucket", (("le", "10.0"),))] == 0
    assert after[("llmsite_job_decode_tokens_per_second_bucket", (("le", "20.0"),))] == 1
    assert after[("llmsite_job_decode_tokens_per_second_bucket", (("le", "+Inf"),))] == 1


def test_the_histograms_cover_only_the_window(staff_client, make_job, settings):
    settings.METRICS_WINDOW_S = 3600
    old = finished_job(make_job, wait_s=1, ttft_s=1, tokens=10, decode_s=1)
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    samples = scrape(staff_client)
    assert samples[("llmsite_job_queue_wait_seconds_gcount", ())] == 0
    assert samples[("llmsite_jobs", (("state", "succeeded"),))] == 1  # still in the state count


def test_it_shows_queue_depths_and_what_each_worker_holds(staff_client, checkpoint):
    registry.publish(name="w1@host", holds={checkpoint.pk: 1000}, status={
        "resident": [checkpoint.pk], "loading": [], "memory_used_bytes": 1000, "memory_budget_bytes": 4000,
        "running_jobs": 2, "loads": 3, "evictions": 1, "heartbeat_at": 0,
    })
    redis_client.client().lpush("celery", "m1", "m2")
    redis_client.client().lpush(f"checkpoint.{checkpoint.pk}", "m3")

    samples = scrape(staff_client)

    assert samples[("llmsite_queue_depth", (("queue", "celery"),))] == 2
    assert samples[("llmsite_queue_depth", (("queue", f"checkpoint.{checkpoint.pk}"),))] == 1
    worker = (("worker", "w1@host"),)
    assert samples[("llmsite_workers_live", ())] == 1
    assert samples[("llmsite_worker_resident_checkpoints", worker)] == 1
    assert samples[("llmsite_worker_checkpoint_loads_total", worker)] == 3
    assert samples[("llmsite_worker_checkpoint_evictions_total", worker)] == 1
    assert samples[("llmsite_worker_running_jobs", worker)] == 2
    assert samples[("llmsite_worker_memory_budget_bytes", worker)] == 4000
    assert samples[("llmsite_worker_checkpoint_resident", (("checkpoint", checkpoint.name),
                                                           ("checkpoint_id", str(checkpoint.pk)),
                                                           ("worker", "w1@host")))] == 1


def test_it_still_answers_with_redis_down(staff_client, monkeypatch, checkpoint):
    def down():
        raise ConnectionError("redis is down")

    monkeypatch.setattr("generation.fleet.queues.depths", down)
    samples = scrape(staff_client)
    assert samples[("llmsite_redis_up", ())] == 0
    assert ("llmsite_jobs", (("state", "queued"),)) in samples


def test_it_speaks_openmetrics_to_prometheus(staff_client, checkpoint):
    response = staff_client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert b"# TYPE llmsite_job_time_to_first_token_seconds gaugehistogram" in response.content
    assert response.content.endswith(b"# EOF\n")


def test_it_sends_a_stranger_to_sign_in():
    response = Client().get("/metrics")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/metrics")


def test_it_refuses_a_signed_in_user_who_is_not_staff(owner_client):
    assert owner_client.get("/metrics").status_code == 403


def test_it_answers_the_token(settings, checkpoint):
    settings.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_no_token_is_accepted_when_none_is_set(settings, checkpoint):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 302
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 403
