"""Security headers: every page carries the Content-Security-Policy and needs no inline script or style to pass it;
the production environment of README "Production settings" passes `manage.py check --deploy`."""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib import admin
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(48)[:50],
    "ALLOWED_HOSTS": "example.com",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
}
# Neither the environment's own deploy settings nor the test run's async switch (tests.live_services, which
# check --deploy rightly warns about) reach the child.
LEFT_OUT = (*PRODUCTION_ENV, "DJANGO_ALLOW_ASYNC_UNSAFE")


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if key not in LEFT_OUT}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def test_the_production_environment_passes_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_one_machine_defaults_do_not_pass_check_deploy():
    """The defaults serve plain http with a development key, and check --deploy says so."""
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={"DEBUG": "0"})
    assert result.returncode != 0
    for code in ("security.W004", "security.W008", "security.W009", "security.W012", "security.W016"):
        assert code in result.stderr + result.stdout


def test_it_reads_the_proxy_header_by_its_http_name():
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "llmsite.settings",
                                 "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"})
    assert result.stdout.strip().endswith("('HTTP_X_FORWARDED_PROTO', 'https')"), result.stderr
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "llmsite.settings",
                              "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"})
    assert bad.returncode != 0 and "is not a header name" in bad.stderr


@pytest.fixture
def pages(make_job, staff) -> list[str]:
    job = make_job(owner=staff)
    return ["/jobs/new/", "/jobs/", f"/jobs/{job.pk}/", f"/jobs/{job.pk}/delete/", f"/jobs/new/?rerun={job.pk}",
            "/accounts/", "/admin/", "/admin/workers/", "/admin/modelzoo/checkpoint/", "/admin/generation/job/",
            f"/admin/generation/job/{job.pk}/change/", "/admin/modelzoo/checkpoint/add/"]


def test_every_page_has_the_policy_and_no_inline_script_or_style(pages, staff_client, client):
    anonymous = [client.get("/accounts/login/"), client.get("/accounts/signup/")]
    for response in anonymous + [staff_client.get(page) for page in pages]:
        assert response.status_code == 200, response.request["PATH_INFO"]
        directives = policy(response)
        assert directives["script-src"] == ["'self'"]
        assert directives["object-src"] == ["'none'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert directives["style-src"] == ["'self'"]
        html, path = response.content.decode(), response.request["PATH_INFO"]
        assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), path
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert not re.search(r"\sstyle\s*=|<style", html), path


def test_the_json_api_and_errors_carry_it_too(owner_client, client):
    assert "Content-Security-Policy" in client.get("/healthz")
    assert "Content-Security-Policy" in owner_client.get("/jobs/999999/")  # 404
    assert "Content-Security-Policy" in client.post("/v1/chat/completions")  # 401


def test_the_delete_forms_ask_through_the_static_script(make_job, owner_client):
    job = make_job()
    for page in ("/jobs/", f"/jobs/{job.pk}/"):
        html = owner_client.get(page).content.decode()
        assert f'data-confirm="Delete job {job.pk}?"' in html
        assert "/static/generation/confirm.js" in html


def test_every_admin_change_list_passes_without_inline_style(staff_client, checkpoint):
    """Django's admin writes an inline <style> only for a change list without actions; the policy allows none,
    so every registered model keeps its actions (or this test names the one that lost them)."""
    for model in admin.site._registry:
        path = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        response = staff_client.get(path)
        assert response.status_code == 200, path
        assert b"<style" not in response.content, path
