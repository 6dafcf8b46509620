"""Weight-only quantization as a separate pass (the layers never branch on a dtype).

Two steps, as in gpt-fast's quantize.py:

1. offline: `quantize_state_dict(state, mode)` turns the float weights of every Linear
   (wqkv, wo, w13, w2 and the output head) into integer tensors plus scales;
2. runtime: `swap_linears(model, mode)` replaces those nn.Linear modules with
   `Int8Linear` / `Int4Linear` whose buffers have exactly those names and shapes,
   so `load_strict` can check and assign them like any other state dict.

Modes:
- "int8": symmetric per output channel, int8 weights, float scales; matmul by
  torch._weight_int8pack_mm (CPU and CUDA kernels).
- "int4": asymmetric per group of INT4_GROUP_SIZE input channels, packed by
  torch._convert_weight_to_int4pack_for_cpu, matmul by torch._weight_int4pack_mm_for_cpu
  (CPU only; on CUDA use int8 or None).

Embeddings and norms stay in the compute dtype. With tied embeddings the output head
gets its own quantized copy (the table stays float for the row lookups).
"""

from __future__ import annotations

import torch
from torch import nn

QUANTIZATIONS = (None, "int8", "int4")
INT4_GROUP_SIZE = 32
INT4_INNER_K_TILES = 2

# module names (suffixes) of the Linear layers we quantize; the model's are fixed by model.py
_LINEAR_SUFFIXES = ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2")


def check_mode(mode: str | None) -> str | None:
    mode = mode or None
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {mode!r}")
    return mode


def is_quantized_linear(name: str) -> bool:
    """Module name (e.g. 'layers.3.attention.wqkv' or 'output') of a Linear we quantize."""
    return name == "output" or name.endswith(_LINEAR_SUFFIXES)


class Int8Linear(nn.Module):
    """y = x @ (weight * scales[:, None]).T (+ bias); weight int8 (N, K), scales (N,) float."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (..., K)
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.weight, self.scales)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """4-bit weights in torch's CPU int4pack layout; per group of `group_size` input channels
    w = (q - 8) * scale + zero, with scales_and_zeros (K / group_size, N, 2)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, group_size: int = INT4_GROUP_SIZE) -> None:
        super().__init__()
        assert in_features % group_size == 0, "int4 needs in_features divisible by the group size"
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        # _convert_weight_to_int4pack_for_cpu packs two 4-bit values per byte: (N, K / 2) uint8
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros", torch.empty(in_features // group_size, out_features, 2, dtype=dtype))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]), self.weight, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def fits(mode: str, out_features: int, in_features: int) -> bool:
    """Whether a (N, K) weight can take this mode; int4's kernel wants N % 16 == 0 and whole groups.
    A Linear that does not fit stays float (the same test picks it in both passes)."""
    return mode == "int8" or (out_features % 16 == 0 and in_features % INT4_GROUP_SIZE == 0)


def quantize_int8(w: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """w (N, K) float -> {weight: int8 (N, K), scales: (N,)}, symmetric per output row."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (N,)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return {"weight": q, "scales": scales.to(dtype)}


def quantize_int4(w: torch.Tensor, dtype: torch.dtype, group_size: int = INT4_GROUP_SIZE) -> dict[str, torch.Tensor]:
    """w (N, K) float -> {weight: packed uint8, scales_and_zeros: (K/g, N, 2)}, min/max per group."""
    N, K = w.shape
    wg = w.float().reshape(N, K // group_size, group_size)  # (N, G, g)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)  # (N, G, 1)
    q = torch.round((wg - lo) / scale).clamp(0, 15).to(torch.int32).reshape(N, K)  # 0..15
    zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
    sz = torch.stack([scale.reshape(N, -1), zero.reshape(N, -1)], dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)
    return {"weight": packed, "scales_and_zeros": sz.to(dtype)}


def quantize_state_dict(
    state: dict[str, torch.Tensor], mode: str | None, *, dtype: torch.dtype, tie_embeddings: bool
) -> dict[str, torch.Tensor]:
    """Replace each quantized Linear's float `<name>.weight` in place by its quantized tensors.

    Works on a partial state dict (one layer at a time) so the float copies can be freed
    as loading goes. With tied embeddings, `tok_embeddings.weight` also yields `output.*`.
    """
    mode = check_mode(mode)
    if mode is None:
        return state
    fn = quantize_int8 if mode == "int8" else quantize_int4
    for key in [k for k in state if k.endswith(".weight") and is_quantized_linear(k.removesuffix(".weight"))]:
        name = key.removesuffix(".weight")
        if not fits(mode, *state[key].shape):
            continue
        w = state.pop(key)
        state.update({f"{name}.{k}": v for k, v in fn(w, dtype).items()})
    if tie_embeddings and "tok_embeddings.weight" in state and fits(mode, *state["tok_embeddings.weight"].shape):
        state.update({f"output.{k}": v for k, v in fn(state["tok_embeddings.weight"], dtype).items()})
    return state


def swap_linears(model: nn.Module, mode: str | None, *, dtype: torch.dtype) -> nn.Module:
    """Replace the quantized Linear modules by Int8Linear / Int4Linear (run on the meta device)."""
    mode = check_mode(mode)
    if mode is None:
        return model
    cls = Int8Linear if mode == "int8" else Int4Linear
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and is_quantized_linear(name) and fits(mode, module.out_features, module.in_features):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, cls(module.in_features, module.out_features, module.bias is not None, dtype))
    return model
