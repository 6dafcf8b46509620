"""Write a Hugging Face style safetensors directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) from a GGUF, so the safetensors path can be checked against the GGUF golden outputs.
Holds no tests."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from modelzoo.engine import inspect_checkpoint
from modelzoo.engine import gguf_format
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
    reader = gguf_format.open_reader(gguf_path)
    state = gguf_format.read_state_dict(reader, arch=cfg.arch, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({hf_name(name): tensor.contiguous() for name, tensor in state.items()}, str(directory / "model.safetensors"))
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
