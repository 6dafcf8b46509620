"""LoRA finetuning on (prompt, response) pairs: the loss counts the response tokens only, and prompts are
rendered with the base checkpoint's own chat template, as the site will render them at inference."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .block_linear import BlockLinear
from .checkpoint import LoadedCheckpoint
from .lora import attach
from .packed_linear import PackedFloat16Linear
from .threads import ThreadGovernor

IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def encode_example(loaded: LoadedCheckpoint, example: Example, *, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE on the prompt), cut to max_len."""
    prompt = loaded.chat_template.render([{"role": "user", "content": example.prompt}], add_generation_prompt=True)
    prompt_ids = loaded.tokenizer.encode(prompt)
    eos = min(loaded.tokenizer.eos_token_ids) if loaded.tokenizer.eos_token_ids else None
    response_ids = loaded.tokenizer.encode(example.response) + ([eos] if eos is not None else [])
    ids = (prompt_ids + response_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_len]
    return ids, labels


def finetune(
    loaded: LoadedCheckpoint, examples: Iterable[Example], *, epochs: int = 1, lr: float = 1e-3, rank: int = 8,
    alpha: float = 16.0, max_len: int = 256, seed: int = 0, on_step: Callable[[int, int, float], None] | None = None,
    governor: ThreadGovernor | None = None,
) -> list[float]:
    """Attach LoRA to `loaded.model` and train it in place (batch size 1); returns the loss of each step.
    A `governor` resizes torch's threads between steps as the host's other work (a worker's engine) comes and goes."""
    if any(isinstance(m, (PackedFloat16Linear, BlockLinear)) for m in loaded.model.modules()):
        raise ValueError("load the checkpoint with dtype=torch.float32 to finetune it: packed weights are for inference")
    torch.manual_seed(seed)
    model = loaded.model.float()  # trains in float32 whatever dtype it was loaded in (16-bit gradients underflow)
    model.requires_grad_(False)
    params = attach(model, rank=rank, alpha=alpha)
    model.to(loaded.device)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    data = [encode_example(loaded, example, max_len=max_len) for example in examples]
    order = random.Random(seed)
    total, losses = epochs * len(data), []
    model.train()
    for _ in range(epochs):
        order.shuffle(data)
        for ids, labels in data:
            tokens = torch.tensor([ids], device=loaded.device)  # (1, T)
            logits = model(tokens)  # (1, T, V)
            # position t predicts token t+1
            loss = F.cross_entropy(logits[0, :-1], torch.tensor(labels[1:], device=loaded.device), ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if governor is not None:
                governor.tick()
            if on_step is not None:
                on_step(len(losses), total, losses[-1])
    model.eval()
    return losses
