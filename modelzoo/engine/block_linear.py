"""Linear layers that compute from a GGUF file's own Q4_1 / Q8_0 blocks (kernels/block_linear.cpp).

A one-stream decode step streams every weight from memory once, so its speed is the bytes it
reads: the blocks are 5 bits a weight (Q4_1) or 8.5 (Q8_0) against float16's 16, and the
kernel dequantizes them exactly, in float32, in registers (w = d * q + m, the values a float32
dequantizer gives), so the products are no less exact than float32 ones over the file's
weights and more exact than the float16 copy FBGEMM multiplies. Activations stay float32 and
each row of a decode step is computed by the same code whatever its batch (batch invariance).

Only weights the file stores in a supported block type are served this way; the others (and
every weight of a safetensors checkpoint) keep FBGEMM's packed float16 products
(packed_linear.py). `weight` reads back the exact values (as float16, the model's dtype), and
assigning one (a LoRA merge) turns the layer into a packed float16 one.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .loading import FUSED
from .packed_linear import PackedFloat16Linear

#: GGUF block types the kernel reads, by GGML type name: the kernel's `kind` argument.
KINDS = {"Q4_1": 0, "Q8_0": 1}
BLOCK = 32  # weights per block in both


class BlockLinear(nn.Linear):
    """An nn.Linear whose weight is (out_features, in_features / 32) GGUF blocks, computed on float32 inputs."""

    blocks: torch.Tensor  # (out_features, bytes per row) uint8
    kind: int

    def __dir__(self) -> list[str]:
        # torch.jit looks at every name dir() lists (recording a decode step, traced.py): not at `weight`.
        return [name for name in super().__dir__() if name != "weight"]

    @property
    def weight(self) -> torch.Tensor:
        shared = self._parameters.get("weight")
        if shared is not None:  # the output head tied to the embedding table
            return shared
        return torch.ops.llmsite.block_dequantize(self.blocks, self.kind, self.in_features).half()

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        del self.blocks
        self.__class__ = PackedFloat16Linear
        self.pack(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) -> (B, T, out) float32. Decode steps (T = 1) run the block kernel, which computes each row
        alike in any batch; a prompt (T > 1, prefilled alone) runs dequantized chunks through oneDNN's float32 matrix
        product, 2-3x faster than the kernel for a few hundred positions, its bits independent of the threads."""
        product = torch.ops.llmsite.block_matmul if x.dim() == 3 and x.shape[1] > 1 else torch.ops.llmsite.block_linear
        y = product(x if x.dtype == torch.float32 else x.float(), self.blocks, self.kind)  # (a recorded step: no op)
        return y if self.bias is None else y + self.bias

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "blocks", None)
        destination[prefix + "weight"] = self.weight


def use_block_linears(model: nn.Module, blocks: dict[str, tuple[str, torch.Tensor]]) -> int:
    """Turn each nn.Linear named in `blocks` (module path -> (GGML type, (out, bytes) uint8)) into a BlockLinear,
    dropping its float weight (a tied head keeps the shared table); returns how many were turned. Call before
    packed_linear.use_packed_float16, which then packs the rest."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    modules = dict(model.named_modules())
    for path, (ggml_type, rows) in blocks.items():
        module = modules[path]
        if type(module) is not nn.Linear:
            raise TypeError(f"{path} is a {type(module).__name__}, not a Linear")
        if tuple(rows.shape) != (module.out_features, module.in_features // BLOCK * block_bytes(ggml_type)):
            raise ValueError(f"{path}: blocks of shape {tuple(rows.shape)} do not hold a "
                             f"{module.out_features} x {module.in_features} {ggml_type} weight")
        if id(module.weight) not in shared:
            del module._parameters["weight"]
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().float(), requires_grad=False)
        module.__class__ = BlockLinear
        module.register_buffer("blocks", rows.contiguous(), persistent=False)
        module.kind = KINDS[ggml_type]
    return len(blocks)


def block_bytes(ggml_type: str) -> int:
    """Bytes per block of 32 weights: float16 d (and m) and the values."""
    return {"Q4_1": 4 + BLOCK // 2, "Q8_0": 2 + BLOCK}[ggml_type]


def fused_blocks(stored: dict[str, tuple[str, torch.Tensor]], cfg: ModelConfig) -> dict[str, tuple[str, torch.Tensor]]:
    """The file's blocks (gguf_format.read_blocks) by the module path they serve, fused like the float weights
    (loading.FUSED); a fused weight whose parts differ in type, and a type the kernel lacks, are left out."""
    modules: dict[str, tuple[str, torch.Tensor]] = {}

    def add(path: str, parts: list[str]) -> None:
        found = [stored.get(part) for part in parts]
        if any(f is None for f in found) or len({t for t, _ in found}) != 1 or found[0][0] not in KINDS:
            return
        modules[path] = (found[0][0], torch.cat([rows for _, rows in found]) if len(found) > 1 else found[0][1])

    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for name in ("attention.wqkv.weight", "attention.wo.weight", "feed_forward.w13.weight", "feed_forward.w2.weight"):
            add(p + name.removesuffix(".weight"), [p + part for part in FUSED.get(name, (name,))])
    add("output", ["tok_embeddings.weight" if cfg.tie_embeddings else "output.weight"])
    return modules
