"""float16 weights on x86 CPUs: FBGEMM's packed float16 matrix products, float32 activations.

A decode step multiplies every weight by one position per request and costs what it
takes to stream the weights from memory, so 16-bit weights make it about twice as fast
as float32. torch's own float16 products on CPU are a poor fit: its matrix-matrix kernel
runs row by row (16 rows cost 16x one row) and its attention is slow. FBGEMM's kernel
(`torch.ops.quantized.linear_dynamic_fp16`, the one behind dynamic float16
quantization) keeps the weight packed in float16, converts it in registers and
accumulates in float32: measured on 2 cores against torch's float16 product, 1.3-1.8x
faster for one row and ~5x for 16, and each row's result is bitwise the same whatever
other rows share the call, so a request's tokens never depend on its batch.

The float16 weight stays the module's parameter (state dicts, LoRA merges and checks
see it as usual); the packed copy is rebuilt when the weight changes in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import RMSNorm


def available() -> bool:
    """FBGEMM is built into torch's x86 CPU wheels (not the ARM ones)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class PackedFloat16Linear(nn.Linear):
    """An nn.Linear with a float16 weight, computed by FBGEMM on float32 inputs (float32 out)."""

    _packed: tuple[tuple[int, int], torch.Tensor] | None = None  # (weight and bias versions, packed weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.float16:  # e.g. cast to float32 for finetuning
            return F.linear(x, self.weight, self.bias)
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed_weight())

    def packed_weight(self) -> torch.Tensor:
        versions = (self.weight._version, -1 if self.bias is None else self.bias._version)  # bumped by in-place writes
        if self._packed is None or self._packed[0] != versions:
            bias = None if self.bias is None else self.bias.float()
            self._packed = (versions, torch.ops.quantized.linear_prepack_fp16(self.weight, bias))
        return self._packed[1]


def use_packed_float16(model: nn.Module) -> nn.Module:
    """Turn every nn.Linear of a float16 model into a PackedFloat16Linear (in place, weights and ties kept),
    pack them now rather than in the first request, and have the model compute in float32.

    The largest first: packing converts a weight to float32 on the way (the output head's is ~110 MB for a
    49k vocabulary), and that copy is cheapest while few packed weights exist yet; the load's peak memory
    was ~115 MB higher packing the head last."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    for module in sorted(linears, key=lambda m: m.weight.numel(), reverse=True):
        module.__class__ = PackedFloat16Linear
        module.packed_weight()
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.float()  # a few KB; lets the norm run as one fused float32 op
    model.activation_dtype = torch.float32
    return model
