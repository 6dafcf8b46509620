"""Greedy output on the bundled SmolLM2 equals Hugging Face transformers' token for token.

The golden file was made by tests/modelzoo/golden/make_golden.py in a separate
environment with transformers (not a project dependency); see the "how" field in it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelzoo.engine import Engine, SamplingParams, default_checkpoint_path, generate_text, load_checkpoint

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_greedy.json").read_text())


@pytest.fixture(scope="module")
def smollm():
    return load_checkpoint(default_checkpoint_path(), device="cpu")


@pytest.fixture(scope="module")
def engine(smollm):
    eng = Engine(smollm)  # the defaults the site runs with (float16 KV cache on CPU)
    yield eng
    eng.close()


@pytest.mark.slow
def test_it_renders_and_tokenizes_prompts_like_transformers(smollm):
    for case in GOLDEN["cases"]:
        text = smollm.chat_template.render(case["messages"])
        assert text == case["prompt_text"], case["name"]
        assert smollm.tokenizer.encode(text) == case["prompt_token_ids"], case["name"]


@pytest.mark.slow
def test_it_generates_the_golden_greedy_tokens_in_one_batch(smollm, engine):
    eos = smollm.tokenizer.eos_token_ids
    params = SamplingParams(max_tokens=GOLDEN["max_new_tokens"])
    with ThreadPoolExecutor(len(GOLDEN["cases"])) as ex:
        results = list(ex.map(lambda c: generate_text(engine, smollm.tokenizer, c["prompt_token_ids"], params),
                              GOLDEN["cases"]))
    for case, result in zip(GOLDEN["cases"], results):
        golden = case["new_token_ids"]
        ended = golden[-1] in eos
        expected = golden[:-1] if ended else golden  # our token_ids leave out the end-of-sequence token
        assert result.token_ids == expected, case["name"]
        assert result.finish_reason == ("stop" if ended else "length")
        assert result.text == smollm.tokenizer.decode(expected)


@pytest.mark.slow
def test_it_streams_unicode_deltas_that_join_to_the_final_text(smollm, engine):
    prompt = smollm.tokenizer.encode(smollm.chat_template.render([{"role": "user", "content": "Write three emoji and a word in Japanese."}]))
    deltas: list[str] = []
    result = generate_text(engine, smollm.tokenizer, prompt, SamplingParams(temperature=0.8, seed=3, max_tokens=40),
                           on_text=deltas.append)
    assert "".join(deltas) == result.text
    assert all("\ufffd" not in d for d in deltas) or "\ufffd" in result.text


@pytest.mark.slow
@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=10, logprobs=5),
    SamplingParams(max_tokens=10, logprobs=20, temperature=1.2, repetition_penalty=1.3, top_p=0.9, seed=4),
], ids=["greedy", "penalised"])
def test_its_logprobs_equal_a_log_softmax_of_the_full_logits(smollm, params):
    """On the bundled model too: the engine's log-probabilities (float32 KV cache, so that only the cache-free
    pass's order of sums differs) against log_softmax of a cache-free forward over prompt + answer."""
    import math

    import torch

    from tests.modelzoo.test_engine_logprobs import reference

    eng = Engine(smollm, max_batch_size=1, max_seq_len=128, kv_cache_dtype=torch.float32)
    try:
        prompt = smollm.tokenizer.encode(smollm.chat_template.render([{"role": "user", "content": "Name a colour."}]))
        result = eng.generate(prompt, params)
    finally:
        eng.close()
    assert len(result.logprobs) == len(result.token_ids) > 0
    for entry, tok, ref in zip(result.logprobs, result.token_ids, reference(smollm, prompt, result.token_ids, params)):
        assert entry.token_id == tok and math.isclose(entry.logprob, float(ref[tok]), abs_tol=2e-3)
        values, _ = torch.topk(ref, params.logprobs)
        assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=2e-3)
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1.0 + 1e-6
