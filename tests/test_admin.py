"""Admins see jobs and checkpoints in /admin/; the bundled checkpoint is there as the default."""
import pytest


@pytest.mark.django_db
def test_it_lists_the_bundled_checkpoint_as_default(staff_client, checkpoint):
    response = staff_client.get("/admin/modelzoo/checkpoint/")
    assert response.status_code == 200
    assert checkpoint.name in response.content.decode()
    assert checkpoint.is_default


@pytest.mark.django_db
def test_it_lists_and_searches_every_users_jobs(staff_client, make_job, other, checkpoint):
    mine = make_job(prompt="alpha question")
    theirs = make_job(owner=other, prompt="beta question")
    response = staff_client.get("/admin/generation/job/")
    assert response.status_code == 200
    assert "alpha question" in response.content.decode() and "beta question" in response.content.decode()

    response = staff_client.get("/admin/generation/job/", {"q": "beta"})
    content = response.content.decode()
    assert "beta question" in content and "alpha question" not in content
    assert staff_client.get(f"/admin/generation/job/{theirs.pk}/change/").status_code == 200
    assert mine.pk != theirs.pk


@pytest.mark.django_db
def test_it_keeps_the_admin_from_users_who_are_not_staff(owner_client):
    response = owner_client.get("/admin/generation/job/")
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
