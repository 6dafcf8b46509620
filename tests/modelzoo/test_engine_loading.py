"""Loading checks a checkpoint against its own config and refuses a bad one with a CheckpointError that names the
tensor or value, as the file spells it, also under `python -O` (which strips asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from safetensors.torch import load_file, save_file

from modelzoo.engine import CheckpointError, ModelConfig, inspect_checkpoint, load_checkpoint
from modelzoo.engine.loading import expected_shapes
from tests.modelzoo.gguf_factory import write_tiny_gguf
from tests.modelzoo.hf_dir_factory import write_hf_dir

ROOT = Path(__file__).resolve().parents[2]


def gguf_with(path: Path, monkeypatch, change) -> Path:
    """A tiny GGUF written by the factory with `change(name, data) -> [(name, data), ...]` applied to its tensors."""
    real = gguf.GGUFWriter.add_tensor

    def add_tensor(self, name, data, *args, **kwargs):
        for new_name, new_data in change(name, data):
            real(self, new_name, new_data, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(gguf.GGUFWriter, "add_tensor", add_tensor)
        return write_tiny_gguf(path)


def hf_dir_with(tmp_path: Path, change) -> Path:
    """A tiny safetensors folder whose model.safetensors is rewritten as `change(state)` -> {shard name: state}."""
    folder = write_hf_dir(write_tiny_gguf(tmp_path / "tiny.gguf"), tmp_path / "hf")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    for shard, part in change(state).items():
        save_file(part, str(folder / shard))
    return folder


def test_it_loads_a_sound_checkpoint(tmp_path):
    loaded = load_checkpoint(write_tiny_gguf(tmp_path / "tiny.gguf"), device="cpu")
    shapes = expected_shapes(loaded.config)
    assert len(shapes) == 3 + 2 * 9  # embeddings, norm, head; 9 per layer
    assert shapes["layers.1.attention.wk.weight"] == (16, 32)  # 2 kv heads of 8


def test_it_names_a_gguf_tensor_of_the_wrong_shape(tmp_path, monkeypatch):
    def short_q(name, data):
        return [(name, data[:16] if name == "blk.0.attn_q.weight" else data)]

    path = gguf_with(tmp_path / "short.gguf", monkeypatch, short_q)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, device="cpu")
    assert str(error.value) == "tensor 'blk.0.attn_q.weight' has shape (16, 32); expected (32, 32)"


def test_it_names_a_tensor_holding_nan_before_anything_could_hide_it(tmp_path):
    """FBGEMM's packing saturates NaN and Inf to finite float16 values, so they must be caught on the way in."""
    path = write_tiny_gguf(tmp_path / "nan.gguf", poison="blk.1.ffn_up.weight")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, device="cpu")
    assert str(error.value) == "tensor 'blk.1.ffn_up.weight' holds NaN or Inf values"


def test_it_names_an_unexpected_and_a_missing_gguf_tensor(tmp_path, monkeypatch):
    extra = gguf_with(tmp_path / "extra.gguf", monkeypatch, lambda name, data: (
        [(name, data), ("blk.7.ffn_norm.weight", data)] if name == "output_norm.weight" else [(name, data)]))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'blk\.7\.ffn_norm\.weight' \(the config has 2 lay"):
        load_checkpoint(extra, device="cpu")
    missing = gguf_with(tmp_path / "missing.gguf", monkeypatch,
                        lambda name, data: [] if name == "blk.1.ffn_up.weight" else [(name, data)])
    with pytest.raises(CheckpointError, match=r"^missing tensor 'blk\.1\.ffn_up\.weight'$"):
        load_checkpoint(missing, device="cpu")


def test_it_names_a_safetensors_tensor_of_the_wrong_shape(tmp_path):
    def narrow(state):
        state["model.layers.1.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"][:, :10].contiguous()
        return {"model.safetensors": state}

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(hf_dir_with(tmp_path, narrow), device="cpu")
    assert str(error.value) == "tensor 'model.layers.1.mlp.down_proj.weight' has shape (32, 10); expected (32, 64)"


def test_it_refuses_a_tensor_name_held_by_two_shards(tmp_path):
    def two_shards(state):
        return {"model-00001-of-00002.safetensors": state,
                "model-00002-of-00002.safetensors": {"model.norm.weight": state["model.norm.weight"].clone()}}

    with pytest.raises(CheckpointError, match=r"^duplicate tensor name 'model\.norm\.weight'"):
        load_checkpoint(hf_dir_with(tmp_path, two_shards), device="cpu")


def test_it_refuses_a_tied_head_that_differs_from_the_embeddings(tmp_path):
    def untie(state):
        state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
        return {"model.safetensors": state}

    folder = hf_dir_with(tmp_path, untie)
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' differs from 'model\.embed_tokens\.weight'"):
        load_checkpoint(folder, device="cpu")


def test_it_refuses_head_counts_that_do_not_group(tmp_path):
    path = write_tiny_gguf(tmp_path / "heads.gguf", n_heads=4, n_kv_heads=3)
    with pytest.raises(CheckpointError, match=r"^n_heads \(4\) is not a multiple of n_kv_heads \(3\)"):
        inspect_checkpoint(path)


@pytest.mark.parametrize(("values", "message"), [
    (dict(n_heads=0), r"^n_heads must be positive, got 0$"),
    (dict(n_heads=6, n_kv_heads=4), r"^n_heads \(6\) is not a multiple of n_kv_heads \(4\)"),
    (dict(dim=30, n_heads=2), r"^head_dim is 15; rotary embeddings need a positive even head_dim$"),
    (dict(rope_theta=0.0), r"^rope_theta must be positive, got 0.0$"),
])
def test_the_config_refuses_values_it_cannot_build(values, message):
    with pytest.raises(CheckpointError, match=message):
        ModelConfig(**{"vocab_size": 64, "dim": 32, "n_layers": 2, "n_heads": 4, **values})


def test_it_names_a_missing_config_key():
    with pytest.raises(CheckpointError, match=r"^config\.json has no 'hidden_size'$"):
        ModelConfig.from_hf_config({"vocab_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "intermediate_size": 64})


@pytest.mark.slow
def test_it_refuses_bad_checkpoints_under_python_dash_o(tmp_path, monkeypatch):
    shape = gguf_with(tmp_path / "short.gguf", monkeypatch,
                      lambda name, data: [(name, data[:16] if name == "blk.0.attn_q.weight" else data)])
    heads = write_tiny_gguf(tmp_path / "heads.gguf", n_heads=4, n_kv_heads=3)
    duplicate = hf_dir_with(tmp_path, lambda state: {
        "a.safetensors": state, "b.safetensors": {"model.norm.weight": state["model.norm.weight"].clone()}})
    script = (
        "import json, sys\n"
        "assert False, 'asserts must be stripped'\n"
        "from modelzoo.engine import CheckpointError, load_checkpoint\n"
        "out = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_checkpoint(path, device='cpu')\n"
        "        out.append('loaded')\n"
        "    except CheckpointError as error:\n"
        "        out.append(str(error))\n"
        "print(json.dumps(out))\n"
    )
    child = subprocess.run([sys.executable, "-O", "-c", script, str(shape), str(heads), str(duplicate)],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    shape_reason, heads_reason, duplicate_reason = json.loads(child.stdout.strip().splitlines()[-1])
    assert shape_reason == "tensor 'blk.0.attn_q.weight' has shape (16, 32); expected (32, 32)"
    assert heads_reason.startswith("n_heads (4) is not a multiple of n_kv_heads (3)")
    assert duplicate_reason.startswith("duplicate tensor name 'model.norm.weight'")
