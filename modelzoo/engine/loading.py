"""From a format adapter's tensors to a model's weights, checked at every step.

The adapters (gguf_format, safetensors_format) yield (our unfused name, float32 tensor)
pairs. `assemble` checks each one against the config as it arrives (a name the config
expects, once, in the expected shape), fuses q/k/v and gate/up layer by layer, and
quantizes and casts; `load_strict` assigns the result to a model built on the meta
device after checking key sets and shapes against the model itself.

A file is input, not an invariant: every failure raises CheckpointError naming the
tensor as the file names it and the values involved (never `assert`, which `python -O`
strips).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .model import Transformer
from .quantize import quantize_state_dict

Shape = tuple[int, ...]


def expected_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor a checkpoint of `cfg` holds, under our unfused names, with its shape.

    With tied embeddings "output.weight" is still listed: a file may store the head it
    ties (assemble then checks that it repeats the embedding table)."""
    D, F, V = cfg.dim, cfg.hidden_dim, cfg.vocab_size
    shapes: dict[str, Shape] = {"tok_embeddings.weight": (V, D), "norm.weight": (D,), "output.weight": (V, D)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention_norm.weight": (D,),
            p + "attention.wq.weight": (cfg.q_size, D),
            p + "attention.wk.weight": (cfg.kv_size, D),
            p + "attention.wv.weight": (cfg.kv_size, D),
            p + "attention.wo.weight": (D, cfg.q_size),
            p + "ffn_norm.weight": (D,),
            p + "feed_forward.w1.weight": (F, D),  # gate
            p + "feed_forward.w3.weight": (F, D),  # up
            p + "feed_forward.w2.weight": (D, F),  # down
        }
        if cfg.qkv_bias:
            shapes |= {
                p + "attention.wq.bias": (cfg.q_size,),
                p + "attention.wk.bias": (cfg.kv_size,),
                p + "attention.wv.bias": (cfg.kv_size,),
            }
    return shapes


#: Our fused Linear weights in each layer and the unfused ones they stack, in order (rows of the first first).
FUSED = {
    "attention.wqkv.weight": ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight"),
    "feed_forward.w13.weight": ("feed_forward.w1.weight", "feed_forward.w3.weight"),  # gate, up
}


def fuse_layer(state: dict[str, torch.Tensor], i: int, cfg: ModelConfig) -> None:
    """Layer i's unfused wq/wk/wv and w1/w3 -> our fused wqkv/w13, in place (the unfused copies are freed)."""
    p = f"layers.{i}."
    for fused, parts in FUSED.items():
        state[p + fused] = torch.cat([state.pop(p + part) for part in parts], dim=0)
    if cfg.qkv_bias:
        state[p + "attention.wqkv.bias"] = torch.cat([state.pop(p + f"attention.w{n}.bias") for n in "qkv"], dim=0)


def fuse_top(state: dict[str, torch.Tensor], cfg: ModelConfig, *, file_name: Callable[[str], str] = str) -> None:
    """Drop a stored output head that merely repeats the tied embedding table, in place.

    A tied checkpoint whose stored head differs from the table is refused: serving
    either one would silently disagree with the file."""
    if not cfg.tie_embeddings or "output.weight" not in state:
        return
    if not torch.equal(state["output.weight"], state["tok_embeddings.weight"]):
        raise CheckpointError(
            f"tensor {file_name('output.weight')!r} differs from {file_name('tok_embeddings.weight')!r}, "
            "but the config ties the output head to the embedding table"
        )
    del state["output.weight"]


def assemble(
    tensors: Iterable[tuple[str, torch.Tensor]],
    cfg: ModelConfig,
    *,
    quantization: str | None,
    dtype: torch.dtype,
    file_name: Callable[[str], str] = str,
) -> dict[str, torch.Tensor]:
    """Check (name, shape, finite values), fuse, quantize and cast each layer as soon as all its tensors have arrived.

    `file_name` maps our names back to the file's for messages. Only one layer's float32
    weights are alive at a time beyond the result (GGUF files store tensors layer by
    layer), which keeps the load's peak memory near the final size.
    """
    expected = expected_shapes(cfg)
    per_layer = sum(1 for k in expected if k.startswith("layers.0."))
    seen: set[str] = set()
    pending: dict[int, dict[str, torch.Tensor]] = {}
    top: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def finish(part: dict[str, torch.Tensor], *, tie: bool = False) -> None:
        part = quantize_state_dict(part, quantization, dtype=dtype, tie_embeddings=tie)
        for k, v in part.items():
            state[k] = v.to(dtype) if v.is_floating_point() else v
        part.clear()
        release_free_memory()

    for name, tensor in tensors:
        if name not in expected:
            raise CheckpointError(
                f"unexpected tensor {file_name(name)!r} (the config has {cfg.n_layers} layers"
                f"{'' if cfg.qkv_bias else ' and no q/k/v biases'})"
            )
        if name in seen:
            raise CheckpointError(f"duplicate tensor name {file_name(name)!r}")
        seen.add(name)
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"tensor {file_name(name)!r} has shape {tuple(tensor.shape)}; expected {expected[name]}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"tensor {file_name(name)!r} holds NaN or Inf values")
        if not name.startswith("layers."):
            top[name] = tensor
            continue
        i = int(name.split(".", 2)[1])
        part = pending.setdefault(i, {})
        part[name] = tensor
        if len(part) == per_layer:
            fuse_layer(part, i, cfg)
            finish(pending.pop(i))
    missing = [k for k in expected if k not in seen and not (k == "output.weight" and cfg.tie_embeddings)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"missing tensor {file_name(missing[0])!r}{more}")
    fuse_top(top, cfg, file_name=file_name)
    finish(top, tie=cfg.tie_embeddings)
    return state


def release_free_memory() -> None:
    """Hand the memory freed so far back to the system (glibc keeps freed blocks for reuse, so a load that
    frees each layer's float32 copies, or each weight's float16 one once packed, would peak at the sum of what
    it freed on top of what it keeps); a no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def load_strict(
    model: Transformer, state: dict[str, torch.Tensor], *, device: torch.device, dtype: torch.dtype
) -> None:
    """Load a fused (and possibly quantized) state dict, checking that the key sets and every shape match exactly.

    Works on a model built on the meta device (tensors are assigned, not copied into).
    Floating tensors are cast to `dtype`; integer (quantized) tensors keep theirs.
    """
    tied = model.cfg.tie_embeddings and isinstance(model.output, nn.Linear)  # a quantized head has its own copy
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        expected.pop("output.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"the weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"tensor {k!r} has shape {tuple(state[k].shape)}; expected {shape}")
    cast = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    model.load_state_dict(cast, strict=False, assign=True)
    if tied:
        model.output.weight = model.tok_embeddings.weight
