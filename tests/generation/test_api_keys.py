"""API keys on the account page: shown once, stored hashed, revocable; and replaying an API job on the site."""
import hashlib

import pytest
from django.urls import reverse

from generation import services
from generation.models import ApiKey, Job

pytestmark = pytest.mark.django_db


def test_it_creates_a_key_shown_once_and_stored_hashed(owner_client, owner):
    response = owner_client.post(reverse("account"), {"name": "laptop"})
    assert response.status_code == 200
    secret = response.context["secret"]
    assert secret.startswith(ApiKey.PREFIX)
    key = ApiKey.objects.get(owner=owner)
    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in key.hint and secret not in str(key.__dict__)
    page = owner_client.get(reverse("account")).content.decode()
    assert secret not in page and key.hint in page
    assert services.api_key_authenticate(secret=secret) == owner


def test_it_revokes_a_key(owner_client, owner):
    key, secret = services.api_key_create(owner=owner, name="old")
    response = owner_client.post(reverse("api_key_revoke", args=[key.pk]))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert services.api_key_authenticate(secret=secret) is None


def test_it_hides_another_users_key(other_client, owner):
    key, secret = services.api_key_create(owner=owner, name="mine")
    assert other_client.post(reverse("api_key_revoke", args=[key.pk])).status_code == 404
    key.refresh_from_db()
    assert key.is_active


def test_it_replays_an_api_job_as_a_new_job(owner_client, make_job, monkeypatch):
    monkeypatch.setattr(services, "job_enqueue", lambda *, job: True)
    job = make_job(task="chat", source="api", prompt="hi", options={"messages": [{"role": "user", "content": "hi"}]})
    response = owner_client.post(reverse("generation:job_replay", args=[job.pk]))
    new = Job.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302 and response["Location"] == new.get_absolute_url()
    assert (new.task, new.source, new.options, new.status) == ("chat", "api", job.options, "queued")
