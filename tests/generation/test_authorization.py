"""Every job view needs a signed-in owner: strangers are sent to sign in, other users get 404."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from generation.models import Job

pytestmark = pytest.mark.django_db

PUBLIC = {"home", "login", "logout", "signup", "healthz"}  # home: the landing page for visitors


def named_urls(resolver: URLResolver | None = None, namespace: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":
                continue
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            found += named_urls(entry, inner)
        elif entry.name:
            found.append((f"{namespace}{entry.name}", entry))
    return found


def url_of(name: str, pattern: URLPattern, job: Job) -> str:
    kwargs = {key: job.pk for key in pattern.pattern.converters}
    return reverse(name, kwargs=kwargs)


def test_it_sends_a_stranger_to_sign_in_from_every_private_url(make_job):
    job = make_job()
    stranger = Client()
    names = [(name, pattern) for name, pattern in named_urls() if name not in PUBLIC]
    assert {"generation:job_new", "generation:job_list", "generation:job_detail",
            "generation:job_json", "generation:job_delete", "generation:job_cancel"} <= {n for n, _ in names}
    for name, pattern in names:
        url = url_of(name, pattern, job)
        for method in ("get", "post"):
            response = getattr(stranger, method)(url)
            if response.status_code == 405:
                continue
            if name.startswith("api:"):  # the OpenAI-compatible API: no key, 401 in OpenAI's error shape
                assert response.status_code == 401, (name, method)
                assert response.json()["error"]["code"] == "invalid_api_key"
                continue
            assert response.status_code == 302, (name, method)
            login = "/admin/login/?next=" if url.startswith("/admin/") else "/accounts/login/?next="
            assert response["Location"].startswith(login), (name, method)
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_it_answers_the_public_urls():
    stranger = Client()
    assert stranger.get(reverse("login")).status_code == 200
    assert stranger.get(reverse("signup")).status_code == 200
    assert stranger.get(reverse("logout")).status_code == 405  # sign out is POST only
    assert stranger.get(reverse("home")).status_code == 200  # the landing page


@pytest.mark.parametrize("path", ["/jobs/{id}/", "/jobs/{id}.json", "/jobs/{id}/delete/", "/jobs/new/?rerun={id}"])
def test_it_hides_another_users_job(make_job, other_client, path):
    job = make_job()
    assert other_client.get(path.format(id=job.pk)).status_code == 404


@pytest.mark.parametrize("path", ["/jobs/{id}/delete/", "/jobs/{id}/cancel/"])
def test_it_does_not_let_another_user_change_a_job(make_job, other_client, path):
    job = make_job()
    assert other_client.post(path.format(id=job.pk)).status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_it_answers_404_for_a_missing_job(owner_client):
    assert owner_client.get("/jobs/999999/").status_code == 404
    assert owner_client.get("/jobs/999999.json").status_code == 404


def test_it_redirects_home_to_the_new_job_form(owner_client):
    response = owner_client.get("/")
    assert (response.status_code, response["Location"]) == (302, "/jobs/new/")
