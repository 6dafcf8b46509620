"""float16 Linear layers for the CPU: float16 for decode, a bfloat16 copy for prefill.

A decode step multiplies each weight by one position per request, and streaming the
weights from memory is what it costs: float16 weights halve that, torch's float16
matrix-vector kernels are fast, and float16 keeps the golden greedy tokens. Its float16
matrix-matrix kernels are not fast (they run row by row: a 221-token prefill was ~3x
slower than in float32), while bfloat16 ones use the CPU's matrix units (AMX/AVX512-BF16):
a prefill from a bfloat16 copy of the weights was 4x faster than float32, and the golden
greedy tokens still came out (tests/modelzoo/test_engine_golden.py).

So the rule is by positions per row, never by batch size: a request's prefill always
takes the bfloat16 path and its decode steps always the float16 one, whatever else is in
the batch, so its tokens do not depend on its neighbours. The copy costs 2 bytes per
weight; it is rebuilt when the weight changes in place (e.g. a LoRA merge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HalfLinear(nn.Linear):
    """An nn.Linear with float16 weights; inputs (..., T, in): T == 1 -> float16, T > 1 -> bfloat16."""

    _wide: tuple[int, torch.Tensor, torch.Tensor | None] | None = None  # (weight version, weight, bias) in bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.float16 or x.dim() < 2 or x.shape[-2] == 1:
            return F.linear(x, self.weight, self.bias)
        weight, bias = self._bfloat16_copy()
        return F.linear(x.to(torch.bfloat16), weight, bias).to(x.dtype)

    def _bfloat16_copy(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        version = self.weight._version  # bumped by any in-place write, also through a view
        if self._wide is None or self._wide[0] != version:
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            self._wide = (version, self.weight.to(torch.bfloat16), bias)
        return self._wide[1], self._wide[2]


def use_half_linears(model: nn.Module) -> nn.Module:
    """Turn every nn.Linear of a float16 CPU model into a HalfLinear, in place (weights and ties kept),
    and build the bfloat16 copies now rather than in the first request's prefill."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = HalfLinear
            module._bfloat16_copy()
    return model
