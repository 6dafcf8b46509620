"""Hostile and lying checkpoints: each is rejected within seconds, its validation child in well under 1 GB, with a
reason that names the key (or tensor) and the value it declares; a row never stays 'validating'."""
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelzoo import services, validation
from modelzoo.engine.preflight import preflight
from modelzoo.models import Checkpoint
from modelzoo.tasks import validate_checkpoint
from modelzoo.validation import Limits, Report, validate
from tests.modelzoo.gguf_factory import gguf_kv_array, gguf_kv_string, gguf_tensor_info, raw_gguf, write_tiny_gguf
from tests.modelzoo.hf_dir_factory import write_random_hf_dir

QUICK_S = 10
SMALL_BYTES = 1024**3
NESTED_LOOPS = ("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
                "{% endfor %}{% endfor %}{% endfor %}")


def rejected(path: Path, *, base: Path | None = None) -> Report:
    """The report on a file that must be refused, refused fast and in little memory."""
    report = validate(path, base=base, limits=Limits(timeout_s=60))
    assert not report.ok
    assert report.seconds < QUICK_S, report
    assert 0 < report.peak_memory_bytes < SMALL_BYTES, report
    return report


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- headers that declare more than the file holds ----------------------------------------------------------

def test_it_rejects_an_array_of_2_62_elements_in_a_57_byte_file(tmp_path):
    path = written(tmp_path / "liar.gguf", raw_gguf(kv=[gguf_kv_array("tokenizer", 8, 2**62)]))
    assert path.stat().st_size == 57
    assert rejected(path).reason == ("GGUF key 'tokenizer' declares 2^62 array elements (string); "
                                     "the file holds 57 bytes")


def test_it_rejects_a_string_longer_than_the_file(tmp_path):
    path = written(tmp_path / "long.gguf", raw_gguf(kv=[gguf_kv_string("general.name", "tiny", declared=2**60)]))
    assert rejected(path).reason == (f"the value of GGUF key 'general.name' declares a string of 2^60 bytes at "
                                     f"offset 56; the file holds {path.stat().st_size} bytes")


@pytest.mark.parametrize(("counts", "reason"), [
    (dict(tensor_count=2**40), "the GGUF header declares 2^40 tensors; the file holds 24 bytes"),
    (dict(kv_count=2**50), "the GGUF header declares 2^50 keys; the file holds 24 bytes"),
])
def test_it_rejects_counts_of_tensors_and_keys_the_file_cannot_hold(tmp_path, counts, reason):
    assert rejected(written(tmp_path / "many.gguf", raw_gguf(**counts))).reason.startswith(reason)


@pytest.mark.parametrize(("shape", "offset", "declares"), [
    ((16, 16), 2**40, "1024 bytes (F32, shape (16, 16)) at offset 2^40"),
    ((2**31, 2**31), 0, "2^64 bytes (F32, shape (2147483648, 2147483648)) at offset 0"),
])
def test_it_rejects_a_tensor_past_the_end_of_the_file(tmp_path, shape, offset, declares):
    tensor = gguf_tensor_info("token_embd.weight", shape, offset=offset)
    path = written(tmp_path / "far.gguf", raw_gguf(tensors=[tensor]))
    assert rejected(path).reason == (f"tensor 'token_embd.weight' declares {declares} of the data; "
                                     f"the file holds {path.stat().st_size} bytes")


def test_it_rejects_a_file_cut_in_its_tensor_data_as_truncated(tmp_path):
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    report = rejected(written(tmp_path / "cut.gguf", whole[: len(whole) // 2]))
    assert report.reason.startswith("tensor 'blk.")
    assert report.reason.endswith(f"the file holds {len(whole) // 2} bytes (is it truncated?)")
    assert "reshape" not in report.reason


def test_it_rejects_a_file_cut_in_its_header(tmp_path):
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    report = rejected(written(tmp_path / "cut.gguf", whole[:1000]))
    assert report.reason == ("GGUF key 'tokenizer.ggml.tokens' declares 259 array elements (string); "
                             "the file holds 1000 bytes")
    report = rejected(written(tmp_path / "cut.gguf", whole[:3000]))
    assert report.reason.startswith("the GGUF header is cut short: the length of element ")
    assert report.reason.endswith("of GGUF key 'tokenizer.ggml.tokens' needs 8 bytes at offset 2995; "
                                  "the file holds 3000 bytes")


def test_it_rejects_a_safetensors_header_longer_than_the_file(tmp_path):
    folder = write_random_hf_dir(tmp_path / "hf", vocab_size=100, bos_token_id=1, eos_token_id=2, tokenizer_files={})
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert rejected(folder).reason.startswith(
        "model.safetensors declares a header of 2^62 bytes; the file holds 10 bytes")


def test_the_header_scan_does_not_wait_for_torch(tmp_path):
    """The preflight runs before torch is imported: a hostile header costs the child well under a second of
    CPU work and tens of MiB (measured here: ~0.5 s and ~50 MiB on the 2-core test machine)."""
    report = rejected(written(tmp_path / "liar.gguf", raw_gguf(kv=[gguf_kv_array("k", 0, 2**62)])))
    assert report.peak_memory_bytes < 200 * 1024**2, report


# --- the chat template under its budget ------------------------------------------------------------------------

def test_it_stops_three_nested_range_loops_within_seconds(tmp_path):
    report = rejected(write_tiny_gguf(tmp_path / "bomb.gguf", chat_template=NESTED_LOOPS))
    assert report.reason == ("the chat template went past its budget: the template took more than 1000000 steps "
                             "(loop iterations and calls)")


# --- metadata that lies ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["eos_token_id", "bos_token_id"])
def test_it_rejects_a_gguf_special_token_outside_the_vocabulary(tmp_path, key):
    report = rejected(write_tiny_gguf(tmp_path / "ids.gguf", **{key: 10**6}))
    assert report.reason == f"GGUF key 'tokenizer.ggml.{key}' is 1000000, outside the 259-token vocabulary"


@pytest.mark.parametrize("key", ["eos_token_id", "bos_token_id"])
def test_it_rejects_a_config_special_token_outside_the_vocabulary(tmp_path, key):
    ids = {"bos_token_id": 1, "eos_token_id": 2, key: 10**6}
    folder = write_random_hf_dir(tmp_path / "hf", vocab_size=100, tokenizer_files={}, **ids)
    assert rejected(folder).reason == f"config.json '{key}' is 1000000, outside the 100-token vocabulary"


def test_it_rejects_max_position_embeddings_of_2_40(tmp_path):
    folder = write_random_hf_dir(tmp_path / "hf", vocab_size=100, bos_token_id=1, eos_token_id=2, tokenizer_files={},
                                 context_length=2**40)
    assert rejected(folder).reason == ("config.json 'max_position_embeddings' is 2^40; this engine serves at most "
                                       "16777216 positions")


def test_it_rejects_a_gguf_context_length_of_2_40(tmp_path):
    report = rejected(write_tiny_gguf(tmp_path / "long.gguf", context_length=2**40))
    assert report.reason == "GGUF key 'llama.context_length' is 2^40; this engine serves at most 16777216 positions"


def test_it_rejects_a_tensor_named_twice_in_a_safetensors_header(tmp_path):
    folder = write_random_hf_dir(tmp_path / "hf", vocab_size=100, bos_token_id=1, eos_token_id=2, tokenizer_files={},
                                 duplicate="model.norm.weight")
    assert rejected(folder).reason == "the header of model.safetensors names tensor 'model.norm.weight' twice"


def test_it_rejects_a_key_given_twice_in_config_json(tmp_path):
    folder = write_random_hf_dir(tmp_path / "hf", vocab_size=100, bos_token_id=1, eos_token_id=2, tokenizer_files={})
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[:-1] + ', "vocab_size": 100000}')
    assert rejected(folder).reason == "config.json gives the key 'vocab_size' twice"


# --- LoRA adapters and their base ----------------------------------------------------------------------------------

def adapter_folder(folder: Path, config: dict, *, module: str = "o_proj", rank: int = 2) -> Path:
    """An adapter for the tiny GGUF (dim 32): one A/B pair on layer 0's `module`."""
    folder.mkdir(parents=True)
    group = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    prefix = f"base_model.model.model.layers.0.{group}.{module}"
    out_features = {"o_proj": 32, "down_proj": 32}.get(module, 64)
    in_features = 64 if module == "down_proj" else 32
    save_file({f"{prefix}.lora_A.weight": torch.zeros(rank, in_features),
               f"{prefix}.lora_B.weight": torch.zeros(out_features, rank)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 4, **config}))
    return folder


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def test_it_rejects_an_adapter_without_target_modules(tmp_path, tiny_gguf):
    report = rejected(adapter_folder(tmp_path / "a", {}), base=tiny_gguf)
    assert report.reason.startswith("adapter_config.json has no 'target_modules': it must name the modules")


def test_it_rejects_an_adapter_naming_modules_its_base_does_not_have(tmp_path, tiny_gguf):
    report = rejected(adapter_folder(tmp_path / "a", {"target_modules": ["o_proj", "c_attn"]}), base=tiny_gguf)
    assert report.reason == ("adapter_config.json 'target_modules' names 'c_attn', which a Llama-family base does not "
                             "have (it has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")


def test_it_rejects_adapter_weights_for_a_module_target_modules_does_not_name(tmp_path, tiny_gguf):
    folder = adapter_folder(tmp_path / "a", {"target_modules": ["o_proj"]}, module="down_proj")
    assert rejected(folder, base=tiny_gguf).reason == (
        "adapter tensor 'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight' changes down_proj, which "
        "adapter_config.json 'target_modules' (o_proj) does not name")


def test_it_rejects_an_adapter_whose_base_is_a_url(tmp_path, tiny_gguf):
    config = {"target_modules": ["o_proj"], "base_model_name_or_path": "https://example.com/weights"}
    assert rejected(adapter_folder(tmp_path / "a", config), base=tiny_gguf).reason.startswith(
        "adapter_config.json 'base_model_name_or_path' is the URL 'https://example.com/weights'; nothing is fetched")


def test_it_notes_a_hub_name_as_base_without_fetching_it(tmp_path, tiny_gguf):
    config = {"target_modules": ["o_proj"], "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}
    checked = preflight(adapter_folder(tmp_path / "a", config), base=tiny_gguf)
    assert checked.notes == ["adapter_config.json base_model_name_or_path 'HuggingFaceTB/SmolLM2-135M' is not "
                             "fetched: the adapter is merged into the zoo checkpoint chosen as its base"]


# --- the row: always ends ready or rejected ------------------------------------------------------------------------

@pytest.fixture
def stored(settings, tmp_path, tiny_gguf) -> Checkpoint:
    settings.CHECKPOINT_DIR = tmp_path / "store"
    with tiny_gguf.open("rb") as source:
        return services.checkpoint_store(name="tiny", source=source, file_name="tiny.gguf", queue_validation=False)


@pytest.mark.django_db
def test_an_unexpected_error_in_validation_ends_the_row_rejected(stored, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(validation, "validate", broken)
    checkpoint = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert checkpoint.status == Checkpoint.Status.REJECTED
    assert checkpoint.status_reason == "validation failed (RuntimeError: the disk went away)"


@pytest.mark.django_db
def test_a_context_length_the_column_cannot_hold_rejects_the_row(stored, monkeypatch):
    monkeypatch.setattr(validation, "validate", lambda *a, **k: Report(ok=True, format="gguf", context_length=2**40))
    checkpoint = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert checkpoint.status == Checkpoint.Status.REJECTED
    assert checkpoint.status_reason == "context_length 1099511627776 does not fit the database (at most 2147483647)"


@pytest.mark.django_db
def test_a_hostile_upload_ends_rejected_with_its_reason(settings, tmp_path):
    settings.CHECKPOINT_DIR = tmp_path / "store"
    liar = written(tmp_path / "liar.gguf", raw_gguf(kv=[gguf_kv_array("tokenizer.ggml.tokens", 8, 2**62)]))
    with liar.open("rb") as source:
        stored = services.checkpoint_store(name="liar", source=source, file_name="liar.gguf", queue_validation=False)
    checkpoint = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert checkpoint.status == Checkpoint.Status.REJECTED
    assert checkpoint.status_reason.startswith("GGUF key 'tokenizer.ggml.tokens' declares 2^62 array elements")


@pytest.mark.django_db
def test_a_row_a_dead_worker_left_validating_is_claimed_again(stored, monkeypatch, settings):
    from datetime import timedelta

    from django.utils import timezone

    monkeypatch.setattr(validation, "validate", lambda *a, **k: Report(ok=False, reason="checked again"))
    recent = timezone.now() - timedelta(seconds=5)
    Checkpoint.objects.filter(pk=stored.pk).update(status=Checkpoint.Status.VALIDATING, validation_started=recent)
    assert services.checkpoint_validate(checkpoint_id=stored.pk) is None  # still being validated elsewhere

    long_ago = timezone.now() - timedelta(seconds=settings.VALIDATION_TIMEOUT_S + services.VALIDATION_GRACE_S + 1)
    Checkpoint.objects.filter(pk=stored.pk).update(validation_started=long_ago)
    assert services.checkpoint_validate(checkpoint_id=stored.pk).status_reason == "checked again"


@pytest.mark.django_db
def test_one_validation_at_a_time_per_worker_the_next_is_retried(stored, monkeypatch):
    retries = []

    def retry(**kwargs):
        retries.append(kwargs["countdown"])
        return RuntimeError("retried")

    monkeypatch.setattr(validate_checkpoint, "retry", retry)
    with services._validation_slot:  # another validation runs in this worker
        with pytest.raises(services.ValidationBusy):
            services.checkpoint_validate(checkpoint_id=stored.pk, wait=False)
        with pytest.raises(RuntimeError, match="retried"):
            validate_checkpoint.run(stored.pk)
    stored.refresh_from_db()
    assert stored.status == Checkpoint.Status.UPLOADED  # left for the retry, not claimed
    assert retries == [15]


@pytest.mark.django_db
def test_an_adapter_zip_whose_base_is_a_url_is_rejected_through_the_upload(stored, monkeypatch, tmp_path):
    import zipfile

    Checkpoint.objects.filter(pk=stored.pk).update(status=Checkpoint.Status.READY)
    stored.refresh_from_db()
    folder = adapter_folder(tmp_path / "a", {"target_modules": ["o_proj"], "base_model_name_or_path": "http://x/y"})
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, file.name)
    with archive.open("rb") as source:
        adapter = services.checkpoint_store(name="url-lora", source=source, file_name="a.zip", base=stored,
                                            queue_validation=False)
    checkpoint = services.checkpoint_validate(checkpoint_id=adapter.pk)
    assert checkpoint.status == Checkpoint.Status.REJECTED
    assert checkpoint.status_reason.startswith("adapter_config.json 'base_model_name_or_path' is the URL 'http://x/y'")

