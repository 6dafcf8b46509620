"""API keys on the account page: shown once, stored hashed, revocable; and replaying an API job on the site."""
import hashlib
import json

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


def test_revoke_asks_first(owner_client, owner):
    key, _ = services.api_key_create(owner=owner, name="laptop")
    content = owner_client.get(reverse("account")).content.decode()
    form = content[content.index(f'action="{reverse("api_key_revoke", args=[key.pk])}"') - 200:]
    assert 'data-confirm="Revoke the key “laptop”?' in form[:form.index("</form>")]
    assert "generation/confirm.js" in content  # base.html loads the listener that asks


def test_it_removes_a_revoked_key(owner_client, owner):
    key, _ = services.api_key_create(owner=owner, name="old")
    services.api_key_revoke(key=key)
    page = owner_client.get(reverse("account")).content.decode()
    assert f'action="{reverse("api_key_delete", args=[key.pk])}"' in page
    response = owner_client.post(reverse("api_key_delete", args=[key.pk]))
    assert (response.status_code, response["Location"]) == (302, reverse("account"))
    assert not ApiKey.objects.filter(pk=key.pk).exists()
    assert "Key old removed." in owner_client.get(reverse("account")).content.decode()


def test_it_keeps_an_active_key_from_removal(owner_client, owner):
    key, secret = services.api_key_create(owner=owner, name="live")
    page = owner_client.get(reverse("account")).content.decode()
    assert f'action="{reverse("api_key_delete", args=[key.pk])}"' not in page
    response = owner_client.post(reverse("api_key_delete", args=[key.pk]), follow=True)
    assert "still active: revoke it before removing it" in response.content.decode()
    assert services.api_key_authenticate(secret=secret) == owner


def test_it_hides_another_users_key_from_removal(other_client, owner):
    key, _ = services.api_key_create(owner=owner, name="mine")
    services.api_key_revoke(key=key)
    assert other_client.post(reverse("api_key_delete", args=[key.pk])).status_code == 404
    assert other_client.get(reverse("api_key_delete", args=[key.pk])).status_code == 405
    assert ApiKey.objects.filter(pk=key.pk).exists()


def test_the_new_key_has_a_copy_button(owner_client):
    content = owner_client.post(reverse("account"), {"name": "laptop"}).content.decode()
    assert '<code id="new-key-secret">sk-llmsite-' in content
    assert 'data-copy="new-key-secret"' in content and "generation/copy.js" in content


def test_the_snippets_name_the_sites_url_and_the_users_models(owner_client, checkpoint):
    from modelzoo.models import Checkpoint

    Checkpoint.objects.create(name="zeta-model", format="gguf", path="/x", status="ready")
    Checkpoint.objects.create(name="aardvark-rejected", format="gguf", path="/y", status="rejected")
    response = owner_client.get(reverse("account"))
    assert response.context["models"] == [checkpoint.name, "zeta-model"]  # the default first, only ready ones
    snippets = response.context["snippets"]
    assert snippets["curl"].startswith("curl http://testserver/v1/chat/completions \\\n")
    assert f'"model": "{checkpoint.name}"' in snippets["curl"]
    assert 'base_url="http://testserver/v1"' in snippets["python"]
    assert f'model="{checkpoint.name}"' in snippets["python"]
    compile(snippets["python"], "snippet.py", "exec")  # it is Python
    content = response.content.decode()
    assert 'id="snippet-curl"' in content and 'id="snippet-python"' in content and "zeta-model" in content


def test_the_curl_snippet_is_one_shell_command(owner_client, checkpoint):
    import shlex

    checkpoint.name = "it's-a-model"
    checkpoint.save()
    curl = owner_client.get(reverse("account")).context["snippets"]["curl"]
    words = shlex.split(curl.replace("\\\n", " "))
    body = json.loads(words[words.index("-d") + 1])
    assert body["model"] == "it's-a-model"
    assert words[1] == "http://testserver/v1/chat/completions"
