"""safetensors + config.json adapter: a Hugging Face Llama-family directory -> our state dict names."""

from __future__ import annotations

import re
from pathlib import Path

import torch

_LAYER = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}
_TOP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


def our_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER:
        return f"layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    raise KeyError(f"unexpected safetensors tensor {hf_name!r}")


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All *.safetensors shards in float32 under our names (rotary.inv_freq buffers are skipped)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        for name, tensor in load_file(str(file)).items():
            if name.endswith("rotary_emb.inv_freq"):
                continue
            key = our_name(name)
            assert key not in state, f"duplicate tensor {name}"
            state[key] = tensor.float()
    return state
