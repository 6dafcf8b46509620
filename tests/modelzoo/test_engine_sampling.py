"""Sampling: pure functions of logits, seeded draws (stop strings are text: test_engine_text_stream.py)."""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine.sampling import (
    SamplingParams,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_generator,
    sample,
)

LOGITS = torch.tensor([2.0, 1.0, 0.0, -1.0, 3.0])


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_it_keeps_the_top_k():
    assert kept(apply_top_k(LOGITS, 2)) == [0, 4]
    assert kept(apply_top_k(LOGITS, 0)) == [0, 1, 2, 3, 4]


def test_it_keeps_the_nucleus():
    probs = LOGITS.softmax(-1)  # 4: .64, 0: .24, 1: .09, ...
    assert probs[4] > 0.6
    assert kept(apply_top_p(LOGITS, 0.5)) == [4]
    assert kept(apply_top_p(LOGITS, 0.8)) == [0, 4]
    assert kept(apply_top_p(LOGITS, 1.0)) == [0, 1, 2, 3, 4]


def test_it_drops_tokens_below_min_p():
    assert kept(apply_min_p(LOGITS, 0.3)) == [0, 4]  # p(0)/p(4) = e^-1 = .37


def test_it_penalizes_repeated_tokens_both_signs():
    out = apply_repetition_penalty(LOGITS, torch.tensor([0, 3]), 2.0)
    assert out.tolist() == [1.0, 1.0, 0.0, -2.0, 3.0]


def test_it_is_greedy_at_temperature_zero():
    gen = make_generator(SamplingParams(seed=1))
    assert sample(LOGITS, SamplingParams(), torch.tensor([], dtype=torch.long), gen) == 4
    # the penalty applies before argmax even when greedy
    assert sample(LOGITS, SamplingParams(repetition_penalty=10.0), torch.tensor([4]), gen) == 0


def test_it_reproduces_draws_from_a_seed():
    p = SamplingParams(temperature=1.0, seed=123)
    empty = torch.tensor([], dtype=torch.long)
    draws = lambda: [sample(LOGITS, p, empty, g) for g in [make_generator(p)] for _ in range(20)]  # noqa: E731
    assert draws() == draws()
    assert set(draws()) - {0, 4}  # a real draw, not argmax


def test_it_only_draws_from_the_filtered_set():
    p = SamplingParams(temperature=5.0, top_k=2, seed=0)
    gen = make_generator(p)
    assert {sample(LOGITS, p, torch.tensor([], dtype=torch.long), gen) for _ in range(50)} == {0, 4}


def test_it_validates_params():
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    assert SamplingParams(stop=("", "x")).stop == ("x",)
