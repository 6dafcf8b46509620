"""safetensors + config.json adapter: a Hugging Face Llama-family directory -> our state dict names."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .errors import CheckpointError
from .headers import scan_safetensors

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
_HF_LAYER = {ours: theirs for theirs, ours in _LAYER.items()}
_HF_TOP = {ours: theirs for theirs, ours in _TOP.items()}


def our_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER:
        return f"layers.{int(m.group(1))}.{_LAYER[m.group(2)]}"
    raise CheckpointError(f"unexpected tensor {hf_name!r}: not a tensor of a Llama-family decoder")


def file_name(ours: str) -> str:
    """The Hugging Face name of one of our (unfused) tensor names, for messages."""
    if ours in _HF_TOP:
        return _HF_TOP[ours]
    _, index, rest = ours.split(".", 2)
    return f"model.layers.{index}.{_HF_LAYER.get(rest, rest)}"


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All *.safetensors shards in float32 under our names (rotary.inv_freq buffers are skipped).

    A name in two shards, or twice in one header, raises CheckpointError; so does a header whose counts do not
    fit its file (headers.scan_safetensors). Shapes are the loader's to check (loading.assemble)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        scan_safetensors(file)
        for name, tensor in load_file(str(file)).items():
            if name.endswith("rotary_emb.inv_freq"):
                continue
            key = our_name(name)
            if key in state:
                raise CheckpointError(f"duplicate tensor name {name!r} (again in {file.name})")
            state[key] = tensor.float()
    return state
