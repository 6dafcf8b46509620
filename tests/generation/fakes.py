"""Stand-ins for the engine in service tests that check the job's bookkeeping, not the model."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The log-probability FakeEngine gives every token it generates when asked (its alternatives: FAKE_ALTERNATIVES).
FAKE_LOGPROB = -0.5
FAKE_ALTERNATIVES = ((ord("x"), -1.5), (ord("y"), -2.5), (ord("z"), -3.5), (ord("w"), -4.5))


@dataclass
class FakeResult:
    text: str = "Paris."
    prompt_token_ids: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    token_ids: list[int] = field(default_factory=lambda: [10, 11, 12])
    finish_reason: str = "stop"
    ttft_s: float = 0.25
    elapsed_s: float = 1.25
    tokens_per_s: float = 2.0
    batch_size: int = 3
    logprobs: list | None = None


class FakeTokenizer:
    """One id per character (its code point)."""

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def mentions_special(self, text: str) -> bool:
        return False

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class FakeChatTemplate:
    def __init__(self) -> None:
        self.rendered: list[list[dict[str, str]]] = []

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        self.rendered.append(messages)
        body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return body + ("<assistant>" if add_generation_prompt else "")


@dataclass
class FakeConfig:
    max_seq_len: int = 2048


@dataclass
class FakeInfo:
    config: FakeConfig = field(default_factory=FakeConfig)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    chat_template: FakeChatTemplate = field(default_factory=FakeChatTemplate)


def push_text(on_token: Callable[[int], Any], text: str) -> None:
    """Feed `text` to an engine's on_token callback as FakeTokenizer's ids."""
    for character in text:
        on_token(ord(character))


class FakeEngine:
    """Speaks ids like the Engine: records each generate() call, feeds `result.text` to on_token as FakeTokenizer
    ids and answers with `result`, or runs `behaviour(**call)` instead. With params.logprobs set, each token comes
    with a TokenLogprob (FAKE_LOGPROB, its own id first among params.logprobs alternatives), as the Engine's do."""

    def __init__(self, result: FakeResult | None = None, behaviour: Callable[..., Any] | None = None) -> None:
        self.result = result or FakeResult()
        self.behaviour = behaviour
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompt_ids, params, *, on_token=None, should_cancel=None, deadline=None):
        call = {"prompt_ids": prompt_ids, "params": params, "on_token": on_token,
                "should_cancel": should_cancel, "deadline": deadline, "called_at": time.monotonic()}
        self.calls.append(call)
        if self.behaviour is not None:
            return self.behaviour(**call)
        if params.logprobs is None:
            if on_token is not None:
                push_text(on_token, self.result.text)
            return self.result
        from modelzoo.engine.sampling import TokenLogprob

        entries = [TokenLogprob(ord(c), FAKE_LOGPROB, ((ord(c), FAKE_LOGPROB), *FAKE_ALTERNATIVES)[:params.logprobs])
                   for c in self.result.text]
        for entry in entries:
            if on_token is not None:
                on_token(entry.token_id, entry)
        return dataclasses.replace(self.result, logprobs=entries)

    def close(self) -> None:
        pass
