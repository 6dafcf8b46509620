"""float16 Linear layers for the CPU: float16 matrix-vector products, float32 matrix products.

A decode step multiplies each weight by a few rows only, and streaming the weights from
memory is what it costs: float16 weights halve that, and torch's float16 matrix-vector
kernels are fast. Its float16 matrix-matrix kernels are not (they run row by row: a
221-token prefill was ~3x slower than in float32), so many rows at once, as in a
prefill, are multiplied in float32 with the weight upcast for that call, which costs
little spread over the rows. Both paths round the float32 sums to float16 once, so a
row's result barely depends on which path it took.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Above this many rows a product runs in float32 (measured crossover on a 2-core Xeon: 8-32 rows).
MAX_FLOAT16_ROWS = 16


class HalfLinear(nn.Linear):
    """An nn.Linear holding float16 weights; see the module docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= MAX_FLOAT16_ROWS * self.in_features:
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)


def use_half_linears(model: nn.Module) -> nn.Module:
    """Turn every nn.Linear of a float16 CPU model into a HalfLinear, in place (weights and ties kept)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = HalfLinear
    return model
