"""Sign up, sign in, sign out."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

pytestmark = pytest.mark.django_db


def test_it_signs_up_signs_in_and_goes_to_the_new_job_form(client):
    response = client.post("/accounts/signup/", {"username": "carol", "password1": "a-long-pass-9876",
                                                 "password2": "a-long-pass-9876"})
    assert (response.status_code, response["Location"]) == (302, "/jobs/new/")
    user = get_user_model().objects.get(username="carol")
    assert int(client.session["_auth_user_id"]) == user.pk


def test_it_shows_signup_errors(client):
    response = client.post("/accounts/signup/", {"username": "carol", "password1": "x", "password2": "y"})
    assert response.status_code == 200
    assert response.context["form"].errors["password2"]
    assert not get_user_model().objects.filter(username="carol").exists()


def test_it_signs_in_and_returns_to_next(client, owner):
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1",
                                                "next": "/jobs/"})
    assert (response.status_code, response["Location"]) == (302, "/jobs/")


def test_it_signs_in_to_the_new_job_form_by_default(client, owner):
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert response["Location"] == "/jobs/new/"


def test_it_signs_out_on_post(owner_client):
    response = owner_client.post("/accounts/logout/")
    assert (response.status_code, response["Location"]) == (302, "/accounts/login/")
    assert "_auth_user_id" not in owner_client.session


def test_the_nav_shows_admin_only_to_staff(owner_client, owner, checkpoint):
    assert b'href="/admin/"' not in owner_client.get("/jobs/").content
    owner.is_staff = True
    owner.save()
    assert b'href="/admin/"' in owner_client.get("/jobs/").content


def test_it_changes_the_password_and_stays_signed_in(client, owner):
    client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    page = client.get("/accounts/password/")
    assert page.status_code == 200 and b'id="password-form"' in page.content
    response = client.post("/accounts/password/", {"old_password": "alice-password-1",
                                                   "new_password1": "a-new-passphrase-77",
                                                   "new_password2": "a-new-passphrase-77"})
    assert (response.status_code, response["Location"]) == (302, "/accounts/")
    owner.refresh_from_db()
    assert owner.check_password("a-new-passphrase-77")
    assert int(client.session["_auth_user_id"]) == owner.pk  # this session survives the change
    assert "Your password was changed." in client.get("/accounts/").content.decode()


def test_it_refuses_a_wrong_old_password(owner_client, owner):
    response = owner_client.post("/accounts/password/", {"old_password": "nope", "new_password1": "a-new-passphrase-77",
                                                         "new_password2": "a-new-passphrase-77"})
    assert response.status_code == 200
    assert response.context["form"].errors["old_password"]
    owner.refresh_from_db()
    assert owner.check_password("alice-password-1")


def test_the_password_change_needs_a_signed_in_user(client):
    response = client.get("/accounts/password/")
    assert (response.status_code, response["Location"]) == (302, "/accounts/login/?next=/accounts/password/")


def test_the_account_page_links_the_password_change(owner_client):
    assert b'href="/accounts/password/"' in owner_client.get("/accounts/").content
