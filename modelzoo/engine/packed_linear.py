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

Only the packed copy is kept (the float16 weights beside it were ~210 MB more for
SmolLM2-135M): `weight` reads back from the packed copy (exactly, FBGEMM stores the float16
values) and assigning `weight` repacks, which is how a LoRA merge writes. The packed copy is
for inference: a model to train is loaded in float32 (finetune.py). A weight shared with another module (the output head tied to the embeddings) stays
that module's parameter and is packed as well.
"""

from __future__ import annotations

import functools
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from .loading import release_free_memory
from .model import RMSNorm


def available() -> bool:
    """FBGEMM is built into torch's x86 CPU wheels (not the ARM ones)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


#: Row counts probed for rows_computed_apart (an engine's batch is at most this many rows; prompts are alone).
PROBED_ROWS = 64


@functools.cache
def rows_computed_apart() -> frozenset[int]:
    """The row counts M for which FBGEMM computes some rows with other bits than other products do.

    FBGEMM splits the M rows of a product among micro-kernels of a few rows each, picked from a table per
    instruction set; on AVX2 its 1- and 2-row kernels round differently from the others, so a row alone (M = 1)
    and the same row among 16 differed in the last bits (M = 1, 2, 7 and 14 use them), and a request's tokens
    would depend on its neighbours. Found by probing each M up to PROBED_ROWS against the bits most products
    agree on; empty where every kernel agrees (AVX-512)."""
    generator = torch.Generator().manual_seed(0)
    packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(64, 64, generator=generator).half(), None)
    x = torch.randn(PROBED_ROWS, 64, generator=generator)
    products = {m: torch.ops.quantized.linear_dynamic_fp16(x[:m], packed) for m in range(1, PROBED_ROWS + 1)}
    usual = [Counter(products[m][row].numpy().tobytes() for m in range(row + 1, PROBED_ROWS + 1)).most_common(1)[0][0]
             for row in range(PROBED_ROWS)]
    return frozenset(m for m, y in products.items() if any(y[row].numpy().tobytes() != usual[row] for row in range(m)))


@functools.cache
def rows_to_compute(rows: int) -> int:
    """`rows`, or the next row count whose product computes every row as the others do (zero rows pad it)."""
    apart = rows_computed_apart()
    while rows in apart:
        rows += 1
    return rows


class PackedFloat16Linear(nn.Linear):
    """An nn.Linear whose float16 weight lives packed for FBGEMM, computed on float32 inputs (float32 out).

    `weight` is a float16 copy read back from the packed matrix (a tied weight: the shared parameter); change
    it by assigning a new tensor, which repacks. The weight is in state_dict() as usual."""

    _packed: torch.Tensor  # FBGEMM's packed float16 matrix and float32 bias (a TorchBind object)

    def __dir__(self) -> list[str]:
        # torch.jit looks at every name dir() lists (recording a decode step, traced.py): listing `weight`
        # unpacked every weight of the model, ~700 MB for a moment.
        return [name for name in super().__dir__() if name != "weight"]

    @property
    def weight(self) -> torch.Tensor:
        shared = self._parameters.get("weight")
        if shared is not None:
            return shared
        return torch.ops.quantized.linear_unpack_fp16(self._packed)[0].half()

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        self.pack(value)

    def pack(self, weight: torch.Tensor) -> None:
        bias = None if self.bias is None else self.bias.float()
        self._packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().half(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = int(x.numel()) // int(x.shape[-1])  # plain ints also while recording (traced.py: rows are fixed)
        padded = rows_to_compute(rows)
        if padded == rows:
            return torch.ops.quantized.linear_dynamic_fp16(x.float(), self._packed)
        y = torch.ops.quantized.linear_dynamic_fp16(F.pad(x.float().reshape(rows, -1), (0, 0, 0, padded - rows)),
                                                    self._packed)
        return y[:rows].view(*x.shape[:-1], -1)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight


def use_packed_float16(model: nn.Module) -> nn.Module:
    """Turn every nn.Linear of a float16 model into a PackedFloat16Linear (in place; biases and ties kept),
    packed now rather than in the first request, and have the model compute in float32.

    The largest first: packing converts a weight to float32 on the way (the output head's is ~110 MB for a
    49k vocabulary), and that copy is cheapest while few packed weights exist yet; the load's peak memory
    was ~115 MB higher packing the head last."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    for module in sorted(linears, key=lambda m: m.weight.numel(), reverse=True):
        weight = module.weight
        if id(weight) not in shared:
            del module._parameters["weight"]  # the packed copy replaces it
        module.__class__ = PackedFloat16Linear
        module.pack(weight)
        del weight
        release_free_memory()
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.float()  # a few KB; lets the norm run as one fused float32 op
    model.activation_dtype = torch.float32
    return model
