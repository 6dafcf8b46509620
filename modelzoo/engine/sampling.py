"""Sampling: pure functions of one row's logits.

Order (as in transformers' logits processors): repetition penalty, temperature,
top-k, top-p, min-p, then a draw from a per-request torch.Generator. Temperature 0
is greedy (argmax) and ignores the rest except the repetition penalty.

Log-probabilities (SamplingParams.logprobs, token_logprobs): the log_softmax, in float32 and per row, of the
logits after the repetition penalty and the temperature (before top-k/top-p/min-p, so the alternatives keep
finite values); at temperature 0, of the logits after the repetition penalty alone (the raw logits when there
is none). Only requests that ask pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the `top` most likely alternatives, (id, logprob) best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # text: applied by the caller's streamer (text_stream.generate_text), not the engine
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks)
    logprobs: int | None = None  # None = off; N = each token's log-probability plus the N most likely (<= 20)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in 0..{MAX_LOGPROBS}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: divide positive logits of seen tokens by `penalty`, multiply negative ones. logits (V,), seen (N,)."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(0, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(0, seen, scores)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove = cumulative - sorted_logits.softmax(-1) >= p  # mass before this token already reaches p
    remove[0] = False
    return logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < min_p * probs.max(), float("-inf"))


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Filtered distribution for a non-greedy draw. logits (V,) float32 -> probs (V,)."""
    logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    logits = apply_min_p(logits, params.min_p)
    return logits.softmax(-1)


def make_generator(params: SamplingParams) -> torch.Generator:
    """A CPU generator per request, so a seed reproduces regardless of batch neighbours."""
    gen = torch.Generator(device="cpu")
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed)
    return gen


def sample(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor, generator: torch.Generator) -> int:
    """One token id from one row's logits (V,) given the ids seen so far (prompt + output)."""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return int(logits.argmax())
    probs = logits_to_probs(logits, params).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprobs(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor, token_id: int) -> TokenLogprob:
    """The chosen token's log-probability and the params.logprobs best alternatives, from one row's logits (V,)
    and the ids seen before it, as the distribution sample() drew from (see the module's docstring)."""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.temperature > 0.0:
        logits = logits / params.temperature
    lp = torch.log_softmax(logits, -1)
    top: tuple[tuple[int, float], ...] = ()
    if params.logprobs:
        values, ids = torch.topk(lp, min(params.logprobs, lp.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id, float(lp[token_id]), top)
