"""A LoRA adapter (PEFT .zip) uploads on a base in the zoo, validates, and the pool serves base + adapter."""
import json
import zipfile
from pathlib import Path

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from safetensors.torch import save_file

from modelzoo import pool, services
from modelzoo.engine import CheckpointError, load_checkpoint
from modelzoo.engine.lora import attach, merge_adapter, save_adapter
from modelzoo.models import Checkpoint
from tests.modelzoo.gguf_factory import write_tiny_gguf

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def storage(settings, tmp_path: Path) -> Path:
    settings.CHECKPOINT_DIR = tmp_path / "store"
    pool.clear()
    yield settings.CHECKPOINT_DIR
    pool.clear()


@pytest.fixture
def tiny_base(tmp_path: Path) -> Checkpoint:
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=2048)
    with gguf_file.open("rb") as source:
        stored = services.checkpoint_store(name="tiny", source=source, file_name="tiny.gguf", queue_validation=False)
    return services.checkpoint_validate(checkpoint_id=stored.pk)


def adapter_zip(base: Checkpoint, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A random (non-zero) adapter for `base`, zipped in the PEFT layout, and the model it was attached to."""
    loaded = load_checkpoint(base.file_path(), device="cpu", dtype=torch.float32)
    torch.manual_seed(1)
    for param in attach(loaded.model, rank=2, alpha=4.0):
        param.data.normal_(0, 0.5)
    folder = save_adapter(loaded.model, tmp_path / "adapter", base_name=base.name, rank=2, alpha=4.0)
    archive = tmp_path / "adapter.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, f"adapter/{file.name}")
    return archive, loaded.model


@pytest.mark.slow
def test_it_validates_an_adapter_and_serves_it_merged_into_its_base(staff_client, tiny_base, tmp_path, settings):
    settings.ENGINE_DTYPE = "float32"  # compared with the float32 model the adapter was trained on
    assert tiny_base.status == Checkpoint.Status.READY
    archive, attached_model = adapter_zip(tiny_base, tmp_path)
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {
        "name": "tiny-lora", "base": tiny_base.pk, "upload": SimpleUploadedFile("adapter.zip", archive.read_bytes()),
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    adapter = services.checkpoint_validate(checkpoint_id=Checkpoint.objects.get(name="tiny-lora").pk)
    assert adapter.status == Checkpoint.Status.READY, adapter.status_reason
    assert adapter.format == "lora" and adapter.base == tiny_base
    assert adapter.status_reason == ("adapter_config.json base_model_name_or_path 'tiny' is not fetched: the adapter "
                                     "is merged into the zoo checkpoint 'tiny'")

    served = pool.engine_for(adapter).checkpoint.model
    tokens = torch.tensor([[257, 10, 20, 30, 40]])
    with torch.inference_mode():
        assert torch.allclose(served(tokens), attached_model(tokens), atol=1e-4)
        assert not torch.allclose(served(tokens), pool.engine_for(tiny_base).checkpoint.model(tokens), atol=1e-3)


@pytest.mark.slow
def test_it_rejects_an_adapter_zip_without_a_base_as_not_a_model(tiny_base, tmp_path):
    archive, _ = adapter_zip(tiny_base, tmp_path)
    with archive.open("rb") as source:
        stored = services.checkpoint_store(name="orphan", source=source, file_name="a.zip", queue_validation=False)
    rejected = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert rejected.status == Checkpoint.Status.REJECTED
    assert "base checkpoint" in rejected.status_reason


@pytest.mark.slow
def test_it_rejects_an_adapter_for_another_shape(tiny_base, tmp_path):
    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                             "target_modules": ["o_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight": torch.zeros(2, 99),
               "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight": torch.zeros(32, 2)},
              str(folder / "adapter_model.safetensors"))
    archive = tmp_path / "wrong.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, file.name)
    with archive.open("rb") as source:
        stored = services.checkpoint_store(name="wrong", source=source, file_name="wrong.zip", base=tiny_base,
                                           queue_validation=False)
    rejected = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert rejected.status == Checkpoint.Status.REJECTED
    assert "do not fit" in rejected.status_reason


def write_v_adapter(directory: Path, a: torch.Tensor, b: torch.Tensor) -> None:
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                                                "target_modules": ["v_proj"]}))
    save_file({"base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight": a,
               "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight": b},
              str(directory / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (None, 1e-2)])  # None: float16, packed
def test_it_merges_q_and_v_updates_into_their_rows_of_the_fused_weight(tiny_base, tmp_path, dtype, atol):
    loaded = load_checkpoint(tiny_base.file_path(), device="cpu", dtype=dtype)
    cfg = loaded.config
    before = loaded.model.layers[1].attention.wqkv.weight.clone()
    a, b = torch.randn(2, cfg.dim), torch.randn(cfg.kv_size, 2)
    write_v_adapter(tmp_path, a, b)
    assert merge_adapter(loaded.model, tmp_path) == 1
    after = loaded.model.layers[1].attention.wqkv.weight
    v_rows = slice(cfg.q_size + cfg.kv_size, cfg.q_size + 2 * cfg.kv_size)
    assert torch.allclose((after[v_rows] - before[v_rows]).float(), b @ a, atol=atol)
    assert torch.equal(after[: cfg.q_size + cfg.kv_size], before[: cfg.q_size + cfg.kv_size])  # q and k untouched


@pytest.mark.slow
def test_it_refuses_an_adapter_whose_update_holds_nan(tiny_base, tmp_path):
    loaded = load_checkpoint(tiny_base.file_path(), device="cpu")
    a, b = torch.randn(2, loaded.config.dim), torch.randn(loaded.config.kv_size, 2)
    a[0, 3] = float("nan")
    write_v_adapter(tmp_path, a, b)
    with pytest.raises(CheckpointError, match="layer 1 v_proj: the adapter's update holds NaN or Inf values"):
        merge_adapter(loaded.model, tmp_path)
