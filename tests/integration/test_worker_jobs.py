"""A job submitted through the form reaches a real worker and ends with the bundled model's output."""
import pytest
from django.urls import reverse

from generation.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

SUBMISSIONS = [
    {"task": "code", "language": "python", "prompt": "Write a function that returns the square of a number."},
    {"task": "qa", "prompt": "What colour is the door?", "context": "The house has a red door and a blue roof."},
    {"task": "summarize", "length": "short",
     "prompt": "The city council met on Monday to discuss the new park. Residents asked for more trees, "
               "a playground and longer opening hours. The council agreed to plant forty trees this spring."},
]


def submit(client, fields: dict) -> int:
    response = client.post(reverse("generation:job_new"), {"max_tokens": 48, **fields})
    assert response.status_code == 302, response.content.decode()[:2000]
    return int(response.url.rstrip("/").split("/")[-1])


def test_it_runs_a_job_of_each_task_to_success(worker, owner_client, checkpoint, wait_for_job):
    job_ids = [submit(owner_client, fields) for fields in SUBMISSIONS]

    for job_id, fields in zip(job_ids, SUBMISSIONS):
        job = wait_for_job(job_id)
        assert job.status == Job.Status.SUCCEEDED, (job.error, worker.log()[-3000:])
        assert job.task == fields["task"]
        assert job.output.strip()
        assert job.completion_tokens and job.completion_tokens > 0
        assert job.prompt_tokens and job.prompt_tokens > 10
        assert job.started_at and job.first_token_at and job.finished_at
        assert job.created_at <= job.started_at <= job.first_token_at <= job.finished_at
        assert job.tokens_per_s() and job.tokens_per_s() > 0

    payload = owner_client.get(reverse("generation:job_json", args=[job_ids[0]])).json()
    assert payload["status"] == "succeeded"
    assert payload["output"] == Job.objects.get(pk=job_ids[0]).output


def test_it_redelivers_a_job_whose_worker_was_killed_mid_job(worker, owner_client, checkpoint, wait_for_job):
    # Greedy, this prompt makes the bundled model repeat itself to the limit: 1,024 tokens, seconds of work at
    # any speed (the partial output is written every second; a job of under a second is never seen mid-way).
    job_id = submit(owner_client, {
        "task": "code", "language": "python", "max_tokens": 1024, "temperature": 0,
        "prompt": "Write a Python class for a linked list with methods to insert, delete, search, reverse "
                  "and print, each with a docstring, and a short example of using it.",
    })
    running = wait_for_job(job_id, until=lambda job: job.is_finished or (job.status == Job.Status.RUNNING
                                                                           and job.output))
    assert running.status == Job.Status.RUNNING, ("finished before it could be killed", running.completion_tokens)
    assert running.attempts == 1

    worker.kill()
    assert Job.objects.get(pk=job_id).status == Job.Status.RUNNING  # the row still says running: nobody acked
    worker.start()

    job = wait_for_job(job_id, timeout_s=240)
    assert job.status == Job.Status.SUCCEEDED, (job.error, worker.log()[-3000:])
    assert job.attempts == 2
    assert job.output.strip()


def test_it_reports_the_live_worker_on_healthz(worker, client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["workers"]["count"] >= 1
    assert any(name.startswith("worker1@") for name in body["workers"]["names"])
