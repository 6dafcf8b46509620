"""Admins see jobs and checkpoints in /admin/; the bundled checkpoint is there as the default."""
import pytest
from django.test import Client


@pytest.fixture
def admin_client_(django_user_model) -> Client:
    admin = django_user_model.objects.create_superuser(username="root", password="root-password-1")
    client = Client()
    client.force_login(admin)
    return client


@pytest.mark.django_db
def test_it_lists_the_bundled_checkpoint_as_default(admin_client_, checkpoint):
    response = admin_client_.get("/admin/modelzoo/checkpoint/")
    assert response.status_code == 200
    assert checkpoint.name in response.content.decode()
    assert checkpoint.is_default


@pytest.mark.django_db
def test_it_lists_and_searches_every_users_jobs(admin_client_, make_job, other, checkpoint):
    mine = make_job(prompt="alpha question")
    theirs = make_job(owner=other, prompt="beta question")
    response = admin_client_.get("/admin/generation/job/")
    assert response.status_code == 200
    assert "alpha question" in response.content.decode() and "beta question" in response.content.decode()

    response = admin_client_.get("/admin/generation/job/", {"q": "beta"})
    content = response.content.decode()
    assert "beta question" in content and "alpha question" not in content
    assert admin_client_.get(f"/admin/generation/job/{theirs.pk}/change/").status_code == 200
    assert mine.pk != theirs.pk


@pytest.mark.django_db
def test_it_keeps_the_admin_from_users_who_are_not_staff(owner_client):
    response = owner_client.get("/admin/generation/job/")
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
