"""/jobs/: the owner's history, newest first, paginated, filtered, searchable; delete with confirmation."""
from __future__ import annotations

import pytest

from generation.models import Job
from generation.selectors import job_list_for_user

pytestmark = pytest.mark.django_db


def ids(response) -> list[int]:
    return [job.pk for job in response.context["page"].object_list]


def test_it_lists_only_the_owners_jobs_newest_first(owner_client, make_job, other, checkpoint):
    first, second = make_job(prompt="first"), make_job(prompt="second")
    make_job(owner=other, prompt="not mine")
    response = owner_client.get("/jobs/")
    assert response.status_code == 200
    assert ids(response) == [second.pk, first.pk]
    assert b"not mine" not in response.content
    assert f'href="/jobs/new/?rerun={first.pk}"'.encode() in response.content
    assert f'action="/jobs/{first.pk}/delete/"'.encode() in response.content


def test_it_paginates(owner_client, make_job, settings):
    settings.JOBS_PER_PAGE = 2
    jobs = [make_job(prompt=f"job {n}") for n in range(5)]
    page1 = owner_client.get("/jobs/")
    page3 = owner_client.get("/jobs/?page=3")
    assert ids(page1) == [jobs[4].pk, jobs[3].pk]
    assert ids(page3) == [jobs[0].pk]
    assert owner_client.get("/jobs/?page=99").status_code == 200  # clamps to the last page
    assert b"Page 1 of 3" in page1.content


def test_it_filters_by_task_and_status(owner_client, make_job):
    code = make_job(task=Job.Task.CODE)
    make_job(task=Job.Task.QA)
    done = make_job(task=Job.Task.CODE, status=Job.Status.SUCCEEDED)
    assert ids(owner_client.get("/jobs/?task=code")) == [done.pk, code.pk]
    assert ids(owner_client.get("/jobs/?task=code&status=succeeded")) == [done.pk]
    assert len(ids(owner_client.get("/jobs/?task=bogus"))) == 3  # unknown values are ignored


def test_it_searches_prompts(owner_client, make_job):
    wanted = make_job(prompt="Explain the Fibonacci sequence")
    make_job(prompt="Something else")
    assert ids(owner_client.get("/jobs/?q=fibonacci")) == [wanted.pk]


def test_it_keeps_the_filters_in_the_page_links(owner_client, make_job, settings):
    settings.JOBS_PER_PAGE = 1
    make_job(task=Job.Task.CODE), make_job(task=Job.Task.CODE)
    response = owner_client.get("/jobs/?task=code&q=")
    assert b'href="?task=code&amp;q=&amp;page=2"' in response.content


def test_the_selector_combines_filters(owner, make_job):
    match = make_job(task=Job.Task.QA, status=Job.Status.FAILED, prompt="Why rain?")
    make_job(task=Job.Task.QA, status=Job.Status.FAILED, prompt="Why snow?")
    assert list(job_list_for_user(user=owner, task="qa", status="failed", q="rain")) == [match]


def test_it_deletes_a_job_on_post(owner_client, make_job):
    job = make_job()
    response = owner_client.post(f"/jobs/{job.pk}/delete/")
    assert (response.status_code, response["Location"]) == (302, "/jobs/")
    assert not Job.objects.filter(pk=job.pk).exists()


def test_it_asks_before_deleting_on_get(owner_client, make_job):
    job = make_job()
    response = owner_client.get(f"/jobs/{job.pk}/delete/")
    assert response.status_code == 200
    assert b"Delete job" in response.content
    assert Job.objects.filter(pk=job.pk).exists()


def test_it_cancels_a_queued_job(owner_client, make_job):
    job = make_job()
    response = owner_client.post(f"/jobs/{job.pk}/cancel/")
    assert (response.status_code, response["Location"]) == (302, f"/jobs/{job.pk}/")
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job.finished_at is not None


def test_it_does_not_cancel_a_finished_job(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED)
    owner_client.post(f"/jobs/{job.pk}/cancel/")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
