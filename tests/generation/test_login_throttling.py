"""Sign-in throttling: LOGIN_FAILURE_LIMIT wrong passwords lock one username at one address for LOGIN_LOCKOUT_S;
the sign-in page says when it lifts (429); other users at that address, and the same user elsewhere, still sign
in; the lock lifts after the cool-off; API keys and force_login are not affected."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from axes.models import AccessAttempt
from django.test import AsyncClient, Client
from django.utils import timezone

from generation import services
from generation.accounts.throttling import lockout_message

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


def sign_in(client: Client, username: str, password: str, address: str = "127.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def fail(client: Client, username: str, times: int, address: str = "127.0.0.1"):
    response = None
    for _ in range(times):
        response = sign_in(client, username, "wrong-password", address)
    return response


def test_it_counts_failures_below_the_limit_as_plain_wrong_passwords(client, owner):
    response = fail(client, "alice", 4)
    assert response.status_code == 200
    assert response.context["form"].errors
    assert b'id="lockout"' not in response.content
    assert sign_in(client, "alice", "alice-password-1").status_code == 302


def test_it_locks_the_account_at_that_address_after_five_failures_and_says_when_it_lifts(client, owner):
    response = fail(client, "alice", 5)
    assert response.status_code == 429

    response = sign_in(client, "alice", "alice-password-1")

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    assert b"Too many failed sign-ins" in response.content
    assert b"You can sign in again at" in response.content
    assert b'id="lockout"' in response.content and b'<form method="post"' in response.content  # the login page
    assert 14 * 60 <= int(response["Retry-After"]) <= 15 * 60
    assert "Content-Security-Policy" in response


def test_a_refused_try_during_the_lockout_does_not_extend_it(client, owner):
    fail(client, "alice", 5)
    attempt = AccessAttempt.objects.get(username="alice")
    fail(client, "alice", 3)
    assert AccessAttempt.objects.get(pk=attempt.pk).attempt_time == attempt.attempt_time


def test_another_user_at_the_same_address_still_signs_in(client, owner, other):
    fail(client, "alice", 5)
    response = sign_in(Client(), "bob", "bob-password-1")
    assert (response.status_code, response["Location"]) == (302, "/jobs/new/")


def test_the_same_user_from_another_address_still_signs_in(client, owner):
    fail(client, "alice", 5, address="10.0.0.1")
    assert sign_in(Client(), "alice", "alice-password-1", address="10.0.0.2").status_code == 302


def test_it_lifts_after_the_cool_off(client, owner, settings):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    fail(client, "alice", 5)
    assert sign_in(client, "alice", "alice-password-1").status_code == 429
    time.sleep(1.2)
    response = sign_in(client, "alice", "alice-password-1")
    assert (response.status_code, response["Location"]) == (302, "/jobs/new/")


def test_a_successful_sign_in_resets_the_count(client, owner):
    fail(client, "alice", 4)
    assert sign_in(client, "alice", "alice-password-1").status_code == 302
    client.post("/accounts/logout/")
    assert fail(client, "alice", 4).status_code == 200  # four again, not eight
    assert not AccessAttempt.objects.filter(username="alice", failures_since_start__gt=4).exists()


def test_the_limit_comes_from_the_settings(client, owner, settings):
    settings.AXES_FAILURE_LIMIT = 2
    assert fail(client, "alice", 1).status_code == 200
    assert fail(client, "alice", 1).status_code == 429


def test_the_admin_sign_in_is_throttled_too(client, staff):
    for _ in range(5):
        client.post("/admin/login/", {"username": "root", "password": "wrong"})
    response = client.post("/admin/login/", {"username": "root", "password": "root-password-1"})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_force_login_and_api_keys_are_not_throttled(client, owner, owner_client, checkpoint):
    fail(client, "alice", 5)
    assert owner_client.get("/jobs/").status_code == 200
    _, secret = services.api_key_create(owner=owner, name="script")
    response = Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200


def test_test_client_login_without_a_request_still_works(owner):
    client = Client()
    assert client.login(username="alice", password="alice-password-1")
    assert client.get("/jobs/").status_code == 200


def test_it_answers_the_lockout_page_through_the_async_handler_too(owner):
    """Under uvicorn the middleware runs async, where axes passes the lockout callable other arguments."""
    client = AsyncClient()

    async def sign_in_six_times():
        for _ in range(5):
            await client.post(LOGIN, {"username": "alice", "password": "wrong-password"})
        return await client.post(LOGIN, {"username": "alice", "password": "alice-password-1"})

    response = async_to_sync(sign_in_six_times)()
    assert response.status_code == 429
    assert b"Too many failed sign-ins" in response.content
    assert b'value="alice"' in response.content  # the username stays in the form


def test_the_message_counts_down_in_whole_minutes_then_seconds():
    now = timezone.now()
    assert "(in 15 minutes)" in lockout_message(now + timedelta(seconds=899.2), now=now)
    assert "(in 1 minute)" in lockout_message(now + timedelta(seconds=60), now=now)
    assert "(in 42 seconds)" in lockout_message(now + timedelta(seconds=41.5), now=now)
