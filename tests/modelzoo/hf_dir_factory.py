"""Write a Hugging Face style safetensors directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) from a GGUF, so the safetensors path can be checked against the GGUF golden outputs, or with
random weights around given tokenizer files.
Holds no tests."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from modelzoo.engine import gguf_format, inspect_checkpoint
from modelzoo.engine.safetensors_format import _LAYER, _TOP

_HF_TOP = {ours: hf for hf, ours in _TOP.items()}
_HF_LAYER = {ours: hf for hf, ours in _LAYER.items()}


def hf_name(ours: str) -> str:
    if ours in _HF_TOP:
        return _HF_TOP[ours]
    _, index, rest = ours.split(".", 2)
    return f"model.layers.{index}.{_HF_LAYER[rest]}"


def write_hf_dir(gguf_path: Path, directory: Path) -> Path:
    info = inspect_checkpoint(gguf_path)
    cfg = info.config
    file = gguf_format.open_gguf(gguf_path)
    state = gguf_format.read_state_dict(file, arch=cfg.arch, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({hf_name(name): tensor.contiguous() for name, tensor in state.items()},
              str(directory / "model.safetensors"))
    eos = sorted(info.tokenizer.eos_token_ids)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "intermediate_size": cfg.hidden_dim,
        "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "bos_token_id": info.tokenizer.bos_token_id,
    }))
    info.tokenizer.backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": info.chat_template.source}))
    return directory


def write_random_hf_dir(directory: Path, *, vocab_size: int, bos_token_id: int, eos_token_id: int,
                        tokenizer_files: dict[str, bytes], seed: int = 0, dim: int = 32, n_layers: int = 2,
                        n_heads: int = 4, n_kv_heads: int = 2, hidden_dim: int = 64, context_length: int = 256,
                        duplicate: str | None = None) -> Path:
    """A tiny random-weight Llama folder (config.json, model.safetensors) holding `tokenizer_files` as given.
    `duplicate` names a tensor that model.safetensors' header then lists twice (the second copy's bytes last)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    head_dim = dim // n_heads

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    state = {"model.embed_tokens.weight": weight(vocab_size, dim), "model.norm.weight": torch.ones(dim),
             "lm_head.weight": weight(vocab_size, dim)}
    for i in range(n_layers):
        prefix = f"model.layers.{i}."
        state |= {
            prefix + "input_layernorm.weight": torch.ones(dim),
            prefix + "post_attention_layernorm.weight": torch.ones(dim),
            prefix + "self_attn.q_proj.weight": weight(n_heads * head_dim, dim),
            prefix + "self_attn.k_proj.weight": weight(n_kv_heads * head_dim, dim),
            prefix + "self_attn.v_proj.weight": weight(n_kv_heads * head_dim, dim),
            prefix + "self_attn.o_proj.weight": weight(dim, n_heads * head_dim),
            prefix + "mlp.gate_proj.weight": weight(hidden_dim, dim),
            prefix + "mlp.up_proj.weight": weight(hidden_dim, dim),
            prefix + "mlp.down_proj.weight": weight(dim, hidden_dim),
        }
    directory.mkdir(parents=True, exist_ok=True)
    if duplicate is None:
        save_file(state, str(directory / "model.safetensors"))
    else:
        write_safetensors_listing_twice(directory / "model.safetensors", state, duplicate)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size, "hidden_size": dim,
        "num_hidden_layers": n_layers, "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads,
        "intermediate_size": hidden_dim, "max_position_embeddings": context_length, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }))
    for name, data in tokenizer_files.items():
        (directory / name).write_bytes(data)
    return directory


def write_safetensors_listing_twice(path: Path, state: dict, name: str) -> Path:
    """A float32 .safetensors whose header JSON names `name` twice, each entry with bytes of its own (JSON
    parsers keep the last; the safetensors library does). The writer refuses this, so the file is made by hand."""
    import struct

    entries, blobs, offset = [], [], 0
    for key, tensor in [*state.items(), (name, state[name] + 1)]:
        data = tensor.float().contiguous().numpy().tobytes()
        entries.append(f'"{key}": {{"dtype": "F32", "shape": {list(tensor.shape)}, '
                       f'"data_offsets": [{offset}, {offset + len(data)}]}}')
        blobs.append(data)
        offset += len(data)
    header = ("{" + ", ".join(entries) + "}").encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"".join(blobs))
    return path
