"""Shared helpers for the engine tests: a tiny random-weight checkpoint (CPU, fast). Holds no tests."""

from __future__ import annotations

import string

import torch

from modelzoo.engine import LoadedCheckpoint, ModelConfig, Transformer
from modelzoo.engine.chat_template import ChatTemplate
from modelzoo.engine.checkpoint import CheckpointInfo
from modelzoo.engine.config import PRESETS
from modelzoo.engine.tokenizer import Tokenizer

CHARS = "\0" + string.ascii_lowercase + string.digits + " .,!?-\n" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # 0 is eos


class CharTokenizer(Tokenizer):
    """One id per character; id 0 is end of sequence."""

    eos_token_ids = frozenset({0})
    bos_token_id = None
    add_bos = False

    def _encode(self, text: str, *, special: bool = True) -> list[int]:
        return [CHARS.index(c) for c in text]

    def mentions_special(self, text: str) -> bool:
        return False  # no special tokens but end of sequence, which has no text

    def decode(self, ids: list[int]) -> str:
        return "".join(CHARS[i] for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(CHARS)


def tiny_checkpoint(seed: int = 0, **overrides) -> LoadedCheckpoint:
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": len(CHARS), **overrides})
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # sharper than default init, so greedy outputs vary
    model.eval().requires_grad_(False)
    tok = CharTokenizer()
    template = ChatTemplate(None)
    info = CheckpointInfo(cfg, tok, template, "test", "F32", sum(p.numel() for p in model.parameters()))
    return LoadedCheckpoint(cfg, model, tok, template, torch.device("cpu"), info)
