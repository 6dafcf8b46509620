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


@pytest.mark.django_db
def test_it_shows_the_live_workers_and_queue_depths(staff_client, checkpoint):
    from generation.fleet import registry
    from llmsite import redis_client

    redis_client.client().flushdb()
    registry.publish(name="w1@host", holds={checkpoint.pk: 2048}, status={
        "resident": [checkpoint.pk], "loading": [], "memory_used_bytes": 2048, "memory_budget_bytes": 8192,
        "running_jobs": 3, "loads": 5, "evictions": 1, "heartbeat_at": 0,
    })
    redis_client.client().lpush(f"checkpoint.{checkpoint.pk}", "m")
    try:
        assert "/admin/workers/" in staff_client.get("/admin/modelzoo/checkpoint/").content.decode()
        content = staff_client.get("/admin/workers/").content.decode()
    finally:
        redis_client.client().flushdb()
    workers = content[content.index('id="workers"'):]
    assert "w1@host" in workers and checkpoint.name in workers
    assert "2.0\xa0KB / 8.0\xa0KB" in workers
    assert f'<td>checkpoint.{checkpoint.pk}</td><td class="num">1</td>' in workers


@pytest.mark.django_db
def test_it_says_when_the_worker_status_cannot_be_read(staff_client, checkpoint, monkeypatch):
    from generation.fleet import views

    def unreadable():
        raise ConnectionError("redis is down")

    monkeypatch.setattr(views, "workers_overview", unreadable)
    response = staff_client.get("/admin/workers/")
    assert response.status_code == 200
    assert "Worker status unavailable: redis is down" in response.content.decode()
    assert staff_client.get("/admin/modelzoo/checkpoint/").status_code == 200


@pytest.mark.django_db
def test_it_keeps_the_workers_page_from_users_who_are_not_staff(owner_client):
    response = owner_client.get("/admin/workers/")
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")


def checkpoint_row(content: str, name: str) -> str:
    row = content[content.index(f">{name}</a>"):]
    return row[:row.index("</tr>")]


def retire(client, *checkpoints):
    return client.post("/admin/modelzoo/checkpoint/", {"action": "retire",
                                                       "_selected_action": [c.pk for c in checkpoints]}, follow=True)


def banners(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


@pytest.fixture
def second(checkpoint):
    """Another ready checkpoint (the bundled file under another name)."""
    import importlib

    from modelzoo.models import Checkpoint

    bundled = dict(importlib.import_module("modelzoo.migrations.0002_bundled_smollm2").BUNDLED)
    bundled.update(name="smollm2-second", is_default=False)
    return Checkpoint.objects.create(**bundled)


@pytest.mark.django_db
def test_the_checkpoint_list_shows_readable_sizes_and_the_context_jobs_get(staff_client, checkpoint, settings):
    settings.ENGINE_MAX_SEQ_LEN = 2048
    row = checkpoint_row(staff_client.get("/admin/modelzoo/checkpoint/").content.decode(), checkpoint.name)
    assert '<td class="field-file_size">93.8\xa0MB</td>' in row
    assert '<td class="field-parameters">135 M</td>' in row
    assert '<td class="field-context">2,048 (model: 8,192)</td>' in row
    settings.ENGINE_MAX_SEQ_LEN = 16384
    row = checkpoint_row(staff_client.get("/admin/modelzoo/checkpoint/").content.decode(), checkpoint.name)
    assert '<td class="field-context">8,192</td>' in row
    page = staff_client.get(f"/admin/modelzoo/checkpoint/{checkpoint.pk}/change/").content.decode()
    assert "93.8\xa0MB" in page and "135 M" in page


def test_parameter_counts_read_as_people_say_them():
    from modelzoo.admin import parameter_count_display

    counts = (None, 950, 52_000, 134_515_008, 1_540_000_000, 7_240_000_000, 70e9)
    assert [parameter_count_display(n) for n in counts] == ["–", "950", "52 K", "135 M", "1.5 B", "7.2 B", "70 B"]


@pytest.mark.slow
@pytest.mark.django_db
def test_the_bundled_checkpoint_has_the_metadata_validation_reads_from_its_file(checkpoint):
    """The migrated row says what validation's Report says of a byte-identical upload (architecture included,
    which the first data migration could not set)."""
    import importlib

    from django.apps import apps

    from modelzoo.engine import inspect_checkpoint

    checkpoint.architecture = ""  # as 0002 created it
    checkpoint.save()
    importlib.import_module("modelzoo.migrations.0006_bundled_architecture").set_architecture(apps, None)
    checkpoint.refresh_from_db()
    info = inspect_checkpoint(checkpoint.file_path())
    # validation._check builds its Report from these fields of the same inspection
    assert (checkpoint.architecture, checkpoint.format, checkpoint.quantization, checkpoint.parameter_count,
            checkpoint.context_length) == (getattr(info.config, "arch", "llama"), info.format, info.quantization,
                                           info.parameter_count, info.config.max_seq_len)


@pytest.mark.django_db
def test_retiring_says_so(staff_client, checkpoint, second):
    response = retire(staff_client, second)
    assert banners(response) == [("success", "Retired smollm2-second: no new jobs run on it; the history keeps "
                                             "earlier jobs.")]
    assert banners(retire(staff_client, second)) == [
        ("warning", "Nothing to retire: the chosen checkpoints are retired already.")]


@pytest.mark.django_db
def test_retiring_the_default_warns_and_names_the_fallback(staff_client, checkpoint, second):
    from modelzoo.models import Checkpoint

    response = retire(staff_client, checkpoint)
    messages = banners(response)
    assert messages[0][0] == "success"
    assert messages[1] == ("warning", f"{checkpoint.name} was the default checkpoint: jobs that name no checkpoint "
                                      "now run on smollm2-second. Make another checkpoint the default if that is "
                                      "not the one.")
    assert Checkpoint.default().name == "smollm2-second"


@pytest.mark.django_db
def test_retiring_a_task_default_names_the_fallback_and_tasks_that_keep_their_own(staff_client, checkpoint, second):
    from modelzoo import services
    from modelzoo.models import Checkpoint

    services.checkpoint_make_default(checkpoint=second, task="qa")
    services.checkpoint_make_default(checkpoint=checkpoint, task="code")
    messages = banners(retire(staff_client, second))
    assert messages[1] == ("warning", f"smollm2-second was the default for qa: jobs that name no checkpoint now run "
                                      f"on {checkpoint.name}. Make another checkpoint the default if that is not "
                                      "the one.")
    for name in ("smollm2-third", "smollm2-fourth"):
        copy = Checkpoint.objects.get(pk=second.pk)
        copy.pk, copy.name, copy.status = None, name, "ready"
        copy.save()
    services.checkpoint_make_default(checkpoint=Checkpoint.objects.get(name="smollm2-third"), task="code")
    messages = banners(retire(staff_client, checkpoint))
    assert messages[1] == ("warning", f"{checkpoint.name} was the default checkpoint: jobs that name no checkpoint "
                                      "now run on smollm2-fourth (code jobs on their own default, smollm2-third). "
                                      "Make another checkpoint the default if that is not the one.")


@pytest.mark.django_db
def test_retiring_the_last_ready_checkpoint_says_new_jobs_fail(staff_client, checkpoint):
    messages = banners(retire(staff_client, checkpoint))
    assert messages[1][0] == "error"
    assert "no ready checkpoint is left: new jobs fail until one is ready" in messages[1][1]


@pytest.mark.django_db
def test_an_upload_gives_one_banner(staff_client, checkpoint, storage):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("tiny.gguf", b"GGUF not really")
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {"name": "tiny", "notes": "", "upload": upload},
                                 follow=True)
    assert response.redirect_chain[-1][0] == "/admin/modelzoo/checkpoint/"
    assert banners(response) == [("success", "tiny uploaded; it is being validated (refresh to see its status).")]
    upload = SimpleUploadedFile("tiny2.gguf", b"GGUF not really")
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {"name": "tiny2", "upload": upload,
                                                                     "_continue": "1"}, follow=True)
    from modelzoo.models import Checkpoint

    stored = Checkpoint.objects.get(name="tiny2")
    assert response.redirect_chain[-1][0] == f"/admin/modelzoo/checkpoint/{stored.pk}/change/"
    assert len(banners(response)) == 1
