"""POST /jobs/<id>/rate/: thumbs up or down with an optional comment, shown on the job page and filterable in the
history (?rating=up|down|rated|unrated)."""
from __future__ import annotations

import pytest

from generation.models import Job

pytestmark = pytest.mark.django_db


def test_it_stores_a_rating_with_a_comment_and_shows_it(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED, output="Paris.")
    response = owner_client.post(f"/jobs/{job.pk}/rate/", {"rating": "down", "comment": " Too short "})
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    job.refresh_from_db()
    assert (job.rating, job.rating_comment) == (Job.Rating.DOWN, "Too short") and job.rated_at is not None
    content = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'value="down" class="thumb small secondary chosen" aria-pressed="true"' in content
    assert ">Too short</textarea>" in content
    assert owner_client.get(f"/jobs/{job.pk}.json").json()["rating"] == -1


def test_it_changes_and_clears_a_rating(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED, rating=Job.Rating.DOWN, rating_comment="meh")
    owner_client.post(f"/jobs/{job.pk}/rate/", {"rating": "up"})
    job.refresh_from_db()
    assert (job.rating, job.rating_comment) == (Job.Rating.UP, "")
    owner_client.post(f"/jobs/{job.pk}/rate/", {"rating": "clear"})
    job.refresh_from_db()
    assert (job.rating, job.rated_at) == (None, None)


def test_it_goes_back_to_a_local_next_only(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED)
    assert owner_client.post(f"/jobs/{job.pk}/rate/", {"rating": "up", "next": "/conversations/1/#turn-3"}
                             )["Location"] == "/conversations/1/#turn-3"
    assert owner_client.post(f"/jobs/{job.pk}/rate/", {"rating": "up", "next": "https://evil.example/"}
                             )["Location"] == f"/jobs/{job.pk}/"


def test_it_refuses_a_bad_value_and_other_users(owner_client, other_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED)
    owner_client.post(f"/jobs/{job.pk}/rate/", {"rating": "sideways"})
    assert other_client.post(f"/jobs/{job.pk}/rate/", {"rating": "up"}).status_code == 404
    assert owner_client.get(f"/jobs/{job.pk}/rate/").status_code == 405
    job.refresh_from_db()
    assert job.rating is None


def test_the_history_filters_by_rating(owner_client, make_job):
    good = make_job(prompt="good one", rating=Job.Rating.UP)
    bad = make_job(prompt="bad one", rating=Job.Rating.DOWN)
    plain = make_job(prompt="plain one")

    def listed(query: str) -> set[int]:
        return {job.pk for job in owner_client.get(f"/jobs/?{query}").context["page"].object_list}

    assert listed("rating=up") == {good.pk}
    assert listed("rating=down") == {bad.pk}
    assert listed("rating=rated") == {good.pk, bad.pk}
    assert listed("rating=unrated") == {plain.pk}
    assert listed("rating=nonsense") == {good.pk, bad.pk, plain.pk}
    content = owner_client.get("/jobs/?rating=up").content.decode()
    assert '<option value="up" selected>Rated good</option>' in content
