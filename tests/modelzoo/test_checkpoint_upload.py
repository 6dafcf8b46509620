"""Admins bring checkpoints: upload in /admin/ (or import_checkpoint), validation off the request, then ready."""
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from generation.forms import JobForm
from modelzoo import services
from modelzoo.models import Checkpoint
from tests.modelzoo.gguf_factory import write_tiny_gguf

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def storage(settings, tmp_path: Path) -> Path:
    settings.CHECKPOINT_DIR = tmp_path / "store"
    return settings.CHECKPOINT_DIR


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.mark.slow
def test_it_uploads_through_the_admin_and_validates_to_ready(staff_client, staff, tiny_gguf, storage, checkpoint):
    upload = SimpleUploadedFile("../../tiny.gguf", tiny_gguf.read_bytes())
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {"name": "tiny", "notes": "", "upload": upload})
    assert response.status_code == 302, response.content.decode()[:3000]

    stored = Checkpoint.objects.get(name="tiny")
    assert stored.status == Checkpoint.Status.UPLOADED
    assert stored.uploaded_by == staff
    assert Path(stored.path).parent.parent == storage  # "../" in the name never leaves the store
    assert Path(stored.path).read_bytes() == tiny_gguf.read_bytes()
    assert len(stored.sha256) == 64 and stored.size == tiny_gguf.stat().st_size
    assert not JobForm.base_fields["checkpoint"].queryset.filter(pk=stored.pk).exists()  # not choosable yet

    validated = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert validated.status == Checkpoint.Status.READY, validated.status_reason
    assert (validated.format, validated.architecture, validated.context_length) == ("gguf", "llama", 256)
    assert services.checkpoint_validate(checkpoint_id=stored.pk) is None  # a second delivery does nothing


def test_it_refuses_a_pickle_upload_with_a_form_error(staff_client):
    upload = SimpleUploadedFile("model.pt", b"\x80\x04...")
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {"name": "evil", "upload": upload})
    assert response.status_code == 200
    assert "is a pickle" in response.content.decode()
    assert not Checkpoint.objects.filter(name="evil").exists()


@pytest.mark.slow
def test_it_rejects_bad_weights_with_a_reason_the_admin_can_read(staff_client, tmp_path):
    poisoned = write_tiny_gguf(tmp_path / "nan.gguf", poison="output_norm.weight")
    with poisoned.open("rb") as source:
        stored = services.checkpoint_store(name="nan", source=source, file_name="nan.gguf", queue_validation=False)
    rejected = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert rejected.status == Checkpoint.Status.REJECTED
    assert "NaN" in rejected.status_reason
    page = staff_client.get(f"/admin/modelzoo/checkpoint/{stored.pk}/change/").content.decode()
    assert "NaN" in page


def test_it_refuses_an_upload_over_the_size_limit(settings, tmp_path, storage):
    settings.CHECKPOINT_MAX_UPLOAD_BYTES = 1000
    big = write_tiny_gguf(tmp_path / "big.gguf")
    with big.open("rb") as source, pytest.raises(services.UploadError, match="larger than 1000 bytes"):
        services.checkpoint_store(name="big", source=source, file_name="big.gguf")
    assert not Checkpoint.objects.filter(name="big").exists()
    assert not any(storage.glob("*/*"))


@pytest.mark.slow
def test_it_imports_from_the_command_line_as_default(tiny_gguf, checkpoint):
    call_command("import_checkpoint", str(tiny_gguf), "--name", "tiny-cli", "--default")
    imported = Checkpoint.objects.get(name="tiny-cli")
    assert imported.status == Checkpoint.Status.READY
    assert imported.is_default
    checkpoint.refresh_from_db()
    assert not checkpoint.is_default  # one default at a time


@pytest.mark.slow
def test_it_fails_the_import_command_on_a_rejected_file(tmp_path):
    poisoned = write_tiny_gguf(tmp_path / "nan.gguf", poison="token_embd.weight")
    with pytest.raises(CommandError, match="rejected: .*NaN"):
        call_command("import_checkpoint", str(poisoned), "--name", "bad")


def test_it_retires_a_checkpoint_which_stays_in_the_history(staff_client, make_job, checkpoint):
    job = make_job()
    response = staff_client.post("/admin/modelzoo/checkpoint/", {"action": "retire", "_selected_action": [checkpoint.pk]})
    assert response.status_code == 302
    checkpoint.refresh_from_db()
    assert checkpoint.status == Checkpoint.Status.RETIRED and not checkpoint.is_default
    job.refresh_from_db()
    assert job.checkpoint == checkpoint
    assert not JobForm.base_fields["checkpoint"].queryset.filter(pk=checkpoint.pk).exists()


@pytest.mark.slow
def test_it_makes_a_ready_upload_the_default_from_the_admin(staff_client, tiny_gguf, checkpoint):
    with tiny_gguf.open("rb") as source:
        stored = services.checkpoint_store(name="tiny", source=source, file_name="tiny.gguf", queue_validation=False)
    response = staff_client.post("/admin/modelzoo/checkpoint/", {"action": "make_default", "_selected_action": [stored.pk]})
    assert response.status_code == 302
    stored.refresh_from_db()
    assert not stored.is_default  # not ready yet: refused

    services.checkpoint_validate(checkpoint_id=stored.pk)
    staff_client.post("/admin/modelzoo/checkpoint/", {"action": "make_default", "_selected_action": [stored.pk]})
    stored.refresh_from_db()
    checkpoint.refresh_from_db()
    assert stored.is_default and not checkpoint.is_default
    assert Checkpoint.default() == stored


def zip_folder(folder: Path, archive: Path, *, extra: dict[str, bytes] | None = None) -> Path:
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in folder.iterdir():
            zf.write(file, f"{folder.name}/{file.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


@pytest.mark.slow
def test_it_serves_a_zipped_safetensors_folder_uploaded_in_the_admin(staff_client, tiny_gguf, tmp_path, storage):
    from tests.modelzoo.hf_dir_factory import write_hf_dir

    archive = zip_folder(write_hf_dir(tiny_gguf, tmp_path / "tiny-hf"), tmp_path / "tiny-hf.zip")
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {
        "name": "tiny-hf", "upload": SimpleUploadedFile("tiny-hf.zip", archive.read_bytes()),
    })
    assert response.status_code == 302
    validated = services.checkpoint_validate(checkpoint_id=Checkpoint.objects.get(name="tiny-hf").pk)
    assert validated.status == Checkpoint.Status.READY, validated.status_reason
    assert validated.format == "safetensors" and validated.quantization == "F32"
    folder = Path(validated.path)
    assert folder.is_dir() and folder.parent.parent == storage
    assert not any(folder.parent.glob("*.zip"))  # the archive is gone once unpacked


@pytest.mark.slow
def test_it_unpacks_over_a_folder_left_by_an_earlier_database_with_the_same_id(tiny_gguf, tmp_path, storage):
    from tests.modelzoo.hf_dir_factory import write_hf_dir

    archive = zip_folder(write_hf_dir(tiny_gguf, tmp_path / "tiny-hf"), tmp_path / "tiny-hf.zip")
    with archive.open("rb") as source:
        stored = services.checkpoint_store(name="again", source=source, file_name="m.zip", queue_validation=False)
    stale = storage / str(stored.pk) / "model"
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # what an earlier checkpoint with this id unpacked
    validated = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert validated.status == Checkpoint.Status.READY, validated.status_reason
    assert Path(validated.path) == stale and (stale / "model.safetensors").is_file()


def test_it_rejects_a_zip_that_reaches_outside_its_folder(tiny_gguf, tmp_path, storage):
    from tests.modelzoo.hf_dir_factory import write_hf_dir

    archive = zip_folder(write_hf_dir(tiny_gguf, tmp_path / "tiny-hf"), tmp_path / "evil.zip",
                         extra={"../../escape.safetensors": b"x"})
    with archive.open("rb") as source:
        stored = services.checkpoint_store(name="evil", source=source, file_name="evil.zip", queue_validation=False)
    rejected = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert rejected.status == Checkpoint.Status.REJECTED
    assert "outside the checkpoint folder" in rejected.status_reason
    assert not list(storage.parent.rglob("escape.safetensors"))
