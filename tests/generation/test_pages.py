"""The pages around the jobs: the landing page for visitors, and the 404 and 500 pages (with DEBUG off, as in
production), each with the site's navigation."""
from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_visitors_get_the_landing_page(client, checkpoint):
    response = client.get("/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Code generation" in content and "Question answering" in content and "Summarization" in content
    assert 'href="/accounts/signup/"' in content and 'href="/accounts/login/"' in content
    assert checkpoint.name in content


def test_signed_in_users_go_from_home_to_the_new_job_form(owner_client):
    response = owner_client.get("/")
    assert (response.status_code, response["Location"]) == (302, "/jobs/new/")


def test_every_page_has_a_skip_link_landmarks_and_a_favicon(client):
    content = client.get("/accounts/login/").content.decode()
    assert '<a class="skip-link" href="#main">' in content
    assert '<nav aria-label="Main">' in content and '<main id="main"' in content and "<footer" in content
    assert '<link rel="icon" href="/static/generation/favicon.svg" type="image/svg+xml">' in content
    assert Client().get("/static/generation/favicon.svg").status_code == 200


def test_a_missing_page_is_a_styled_404_with_navigation(owner_client, settings):
    settings.DEBUG = False
    response = owner_client.get("/no/such/page/")
    assert response.status_code == 404
    content = response.content.decode()
    assert "Page not found" in content and "/no/such/page/" in content
    assert '<nav aria-label="Main">' in content and 'href="/jobs/"' in content and "site.css" in content


def test_a_server_error_is_a_styled_500_with_navigation(owner, settings, monkeypatch):
    from generation import selectors

    settings.DEBUG = False

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "job_list_for_user", broken)
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    response = client.get("/jobs/")
    assert response.status_code == 500
    content = response.content.decode()
    assert "Something went wrong on our side" in content and "boom" not in content
    assert '<nav aria-label="Main">' in content and 'href="/jobs/new/"' in content and "site.css" in content
