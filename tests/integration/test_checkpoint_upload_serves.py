"""An admin uploads a GGUF; the real worker validates it off the request; a user's job then runs on it."""
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from generation.models import Job
from modelzoo.models import Checkpoint
from tests.modelzoo.gguf_factory import write_tiny_gguf

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_validates_an_upload_on_the_worker_and_serves_a_job_with_it(
    worker, staff_client, owner_client, checkpoint, wait_for_job, tmp_path: Path
):
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=4096)
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {
        "name": "tiny-upload", "upload": SimpleUploadedFile("tiny.gguf", gguf_file.read_bytes()),
    })
    assert response.status_code == 302

    uploaded = Checkpoint.objects.get(name="tiny-upload")
    deadline = time.monotonic() + 120
    while uploaded.status in (Checkpoint.Status.UPLOADED, Checkpoint.Status.VALIDATING) and time.monotonic() < deadline:
        time.sleep(0.2)
        uploaded.refresh_from_db()
    assert uploaded.status == Checkpoint.Status.READY, (uploaded.status_reason, worker.log()[-3000:])

    response = owner_client.post(reverse("generation:job_new"), {
        "task": "qa", "prompt": "Anything?", "checkpoint": uploaded.pk, "max_tokens": 8,
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    job = wait_for_job(int(response.url.rstrip("/").split("/")[-1]))
    assert job.status == Job.Status.SUCCEEDED, (job.error, worker.log()[-3000:])
    assert job.checkpoint == uploaded
    assert job.completion_tokens and job.completion_tokens > 0
