"""/jobs/<id>/ and /jobs/<id>.json: the job's state; output always escaped, code highlighted apart from prose."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generation.models import Job

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert('x')</script>"


def test_it_shows_a_finished_job(owner_client, make_job):
    started = timezone.now()
    job = make_job(status=Job.Status.SUCCEEDED, output="Paris.", prompt_tokens=31, completion_tokens=5,
                   batch_size=3, attempts=1, started_at=started, first_token_at=started + timedelta(seconds=0.5),
                   decode_s=2.0, finished_at=started + timedelta(seconds=2.5))
    response = owner_client.get(f"/jobs/{job.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Paris." in content
    assert 'id="stat-prompt-tokens">31<' in content
    assert 'id="stat-ttft">0.50 s<' in content
    assert 'id="stat-tps">2.0<' in content
    assert 'id="stat-batch">3<' in content
    assert f'data-json-url="/jobs/{job.pk}.json"' in content
    assert 'data-finished="true"' in content
    assert "/static/generation/job.js" in content


def test_it_marks_an_unfinished_job_for_polling(owner_client, make_job):
    content = owner_client.get(f"/jobs/{make_job().pk}/").content.decode()
    assert 'data-finished="false"' in content
    assert "Waiting for the model" in content


def test_it_returns_the_state_as_json(owner_client, make_job):
    job = make_job(status=Job.Status.FAILED, error="time limit exceeded (600 s)", output="partial")
    response = owner_client.get(f"/jobs/{job.pk}.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    data = response.json()
    assert {key: data[key] for key in ("id", "task", "status", "is_finished", "output", "error")} == {
        "id": job.pk, "task": "qa", "status": "failed", "is_finished": True, "output": "partial",
        "error": "time limit exceeded (600 s)"}
    assert set(data) >= {"prompt_tokens", "completion_tokens", "ttft_s", "tokens_per_s", "batch_size",
                         "created_at", "started_at", "first_token_at", "finished_at", "checkpoint", "params",
                         "output_html", "attempts"}


@pytest.mark.parametrize("task", ["qa", "summarize", "code"])
def test_it_escapes_a_script_in_the_output(owner_client, make_job, task):
    job = make_job(task=task, status=Job.Status.SUCCEEDED, output=f"Here: {SCRIPT}\n```html\n{SCRIPT}\n```",
                   prompt=SCRIPT, error=SCRIPT)
    content = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert SCRIPT not in content
    assert "&lt;script&gt;" in content or "&lt;</span><span" in content
    data = owner_client.get(f"/jobs/{job.pk}.json").json()
    assert SCRIPT not in data["output_html"]


def test_it_renders_markdown_with_highlighted_code(owner_client, make_job):
    job = make_job(task=Job.Task.CODE, options={"language": "python"}, status=Job.Status.SUCCEEDED,
                   output="Here is the **function**:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nDone.")
    content = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "<p>Here is the <strong>function</strong>:</p>" in content
    assert '<div class="highlight"><pre tabindex="0"><span></span><code><span class="k">def</span>' in content
    assert "<p>Done.</p>" in content
    assert "/static/generation/pygments.css" in content
    assert "/static/generation/vendor/markdown-it.min.js" in content
    assert "/static/generation/vendor/purify.min.js" in content


@pytest.mark.parametrize("task", ["qa", "summarize", "chat"])
def test_it_renders_markdown_for_every_answer_task(owner_client, make_job, task):
    job = make_job(task=task, status=Job.Status.SUCCEEDED, output="* one\n* two\n\n```python\nx = 1\n```")
    data = owner_client.get(f"/jobs/{job.pk}.json").json()
    assert "<li>one</li>" in data["output_html"]
    assert 'class="highlight"' in data["output_html"]


def test_it_keeps_a_completion_plain(owner_client, make_job):
    job = make_job(task=Job.Task.COMPLETION, status=Job.Status.SUCCEEDED, output="* not a list")
    assert owner_client.get(f"/jobs/{job.pk}.json").json()["output_html"] == '<div class="prose">* not a list</div>'


def test_the_job_computes_its_derived_values(make_job):
    now = timezone.now()
    job = Job(status=Job.Status.RUNNING, created_at=now, started_at=now + timedelta(seconds=1),
              first_token_at=now + timedelta(seconds=1.25), completion_tokens=11, decode_s=5.0)
    assert not job.is_finished and job.is_cancellable
    assert job.ttft() == 0.25
    assert job.queue_wait() == 1.0
    assert job.tokens_per_s() == 2.0
    assert Job(status=Job.Status.SUCCEEDED).is_finished
    assert Job(completion_tokens=1, decode_s=0.0).tokens_per_s() is None
    assert Job(task="code", options={"language": "go"}).language() == "go"
    assert Job(task="qa", options={"language": "go"}).language() == ""


def test_it_shows_the_waits_as_the_user_had_them_beside_the_engines(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED, output="Paris.", completion_tokens=5, decode_s=2.0)
    created = job.created_at
    Job.objects.filter(pk=job.pk).update(started_at=created + timedelta(seconds=3),
                                         first_token_at=created + timedelta(seconds=3.5),
                                         finished_at=created + timedelta(seconds=5.5), finish_reason="stop")
    content = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="stat-queue-wait">3.00 s<' in content
    assert 'id="stat-ttft">0.50 s<' in content and 'id="stat-ttft-user">3.50 s<' in content
    assert 'id="stat-elapsed">5.50 s<' in content
    data = owner_client.get(f"/jobs/{job.pk}.json").json()
    assert (data["queue_wait_s"], data["ttft_s"], data["ttft_from_submission_s"], data["elapsed_s"]) == (
        3.0, 0.5, 3.5, 5.5)
    assert data["finish_text"] == "stopped at the end of the answer" and data["can_continue"] is False


def test_the_output_and_status_are_live_regions(owner_client, make_job):
    content = owner_client.get(f"/jobs/{make_job().pk}/").content.decode()
    assert 'id="job-status" data-part="status" class="status status-queued" role="status" aria-live="polite"' in content
    assert 'aria-live="polite" aria-busy="true">' in content
