"""LoRA adapters in the PEFT layout: train them (LoRALinear), save them, and merge them into a loaded model.

PEFT names a low-rank pair per Hugging Face module, e.g.
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (r, in) and `...lora_B.weight` (out, r);
the update is W += (alpha / r) * B @ A. Our model fuses q/k/v and gate/up, so those targets land in row
slices of the fused weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import LORA_KEY, ModelConfig
from .errors import CheckpointError
from .headers import read_json, scan_safetensors
from .model import Transformer
from .preflight import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MAX_CONFIG_BYTES

#: Modules we train (plain Linears in our model, so training needs no fused-weight slicing).
TRAIN_TARGETS = ("o_proj", "down_proj")


def _target(cfg: ModelConfig, module: str) -> tuple[str, slice]:
    """HF module name -> (our Linear's path inside a layer, the rows of its weight it updates)."""
    q, kv, f = cfg.q_size, cfg.kv_size, cfg.hidden_dim
    table = {
        "q_proj": ("attention.wqkv", slice(0, q)),
        "k_proj": ("attention.wqkv", slice(q, q + kv)),
        "v_proj": ("attention.wqkv", slice(q + kv, q + 2 * kv)),
        "o_proj": ("attention.wo", slice(None)),
        "gate_proj": ("feed_forward.w13", slice(0, f)),
        "up_proj": ("feed_forward.w13", slice(f, 2 * f)),
        "down_proj": ("feed_forward.w2", slice(None)),
    }
    if module not in table:
        raise CheckpointError(f"LoRA target {module!r} is not a Llama projection")
    return table[module]


def _group(module: str) -> str:
    return "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update: y = base(x) + scale * x A^T B^T."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        dtype = base.weight.dtype
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, dtype=dtype) / rank)  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype))  # (out, r): starts as a no-op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def attach(
    model: Transformer, *, rank: int, alpha: float, targets: tuple[str, ...] = TRAIN_TARGETS
) -> list[nn.Parameter]:
    """Wrap the target Linears of every layer in LoRALinear; returns the trainable parameters."""
    params: list[nn.Parameter] = []
    for layer in model.layers:
        for module in targets:
            path, rows = _target(model.cfg, module)
            if rows != slice(None):
                raise ValueError(f"training {module} would need a fused-weight slice; train {TRAIN_TARGETS}")
            parent_name, child_name = path.split(".")
            parent = getattr(layer, parent_name)
            wrapped = LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha)
            setattr(parent, child_name, wrapped)
            params += [wrapped.lora_A, wrapped.lora_B]
    return params


def save_adapter(model: Transformer, directory: Path, *, base_name: str, rank: int, alpha: float,
                 targets: tuple[str, ...] = TRAIN_TARGETS) -> Path:
    """Write the attached adapters as adapter_config.json + adapter_model.safetensors (PEFT layout)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(model.layers):
        for module in targets:
            parent_name, child_name = _target(model.cfg, module)[0].split(".")
            wrapped = getattr(getattr(layer, parent_name), child_name)
            prefix = f"base_model.model.model.layers.{index}.{_group(module)}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = wrapped.lora_A.detach().contiguous().float()
            tensors[f"{prefix}.lora_B.weight"] = wrapped.lora_B.detach().contiguous().float()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    (directory / ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
        "r": rank, "lora_alpha": alpha, "target_modules": list(targets), "lora_dropout": 0.0, "bias": "none",
    }, indent=2))
    return directory


def read_adapter(directory: Path) -> tuple[dict, dict[tuple[int, str], dict[str, torch.Tensor]]]:
    """adapter_config.json and the A/B pairs by (layer, module); every key must be a LoRA weight we know.
    (Validation checks the config and the names against the base first: preflight.check_adapter.)"""
    from safetensors.torch import load_file

    config = read_json(directory / ADAPTER_CONFIG, limit=MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise CheckpointError(f"{ADAPTER_CONFIG} is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"adapter type {config.get('peft_type')!r} is not LoRA")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    scan_safetensors(directory / ADAPTER_WEIGHTS)
    for key, tensor in load_file(str(directory / ADAPTER_WEIGHTS)).items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(f"unexpected tensor {key!r} in the adapter")
        layer, _, module, which = match.groups()
        pairs.setdefault((int(layer), module), {})[which] = tensor
    return config, pairs


@torch.no_grad()
def merge_adapter(model: Transformer, directory: Path) -> int:
    """W += (alpha / r) * B @ A for every pair, checking shapes; returns how many weights were updated."""
    config, pairs = read_adapter(directory)
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"adapter_config.json needs a numeric r and lora_alpha, got r={config.get('r')!r}, "
                              f"lora_alpha={config.get('lora_alpha')!r}") from None
    if rank <= 0:
        raise CheckpointError(f"adapter_config.json r must be positive, got {rank}")
    for (index, module), pair in sorted(pairs.items()):
        if index >= len(model.layers) or set(pair) != {"A", "B"}:
            raise CheckpointError(f"layer {index} {module}: adapter does not fit this model")
        path, rows = _target(model.cfg, module)
        parent_name, child_name = path.split(".")
        linear = getattr(getattr(model.layers[index], parent_name), child_name)
        weight = linear.weight  # a packed Linear's is a copy, written back below (packed_linear.py)
        target = weight[rows]  # (out, in) view
        a, b = pair["A"], pair["B"]
        if a.shape != (rank, target.shape[1]) or b.shape != (target.shape[0], rank):
            raise CheckpointError(f"layer {index} {module}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
                             f"{tuple(target.shape)} at rank {rank}")
        delta = (alpha / rank) * (b.float() @ a.float())  # in float32, then rounded once to the weights' dtype
        if not bool(torch.isfinite(delta).all()):
            raise CheckpointError(f"layer {index} {module}: the adapter's update holds NaN or Inf values")
        target.copy_(target.float() + delta)
        linear.weight = weight
    return len(pairs)
