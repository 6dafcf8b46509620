"""Token log-probabilities (SamplingParams.logprobs) on tiny random-weight models (CPU): equal to a log_softmax
of the full forward pass's logits, the chosen token always there, the top alternatives best first and summing
to at most 1, the same bits alone and in a batch of 16, in OpenAI's shape through generate_text, and nothing
for requests that do not ask."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from modelzoo.engine import Engine, SamplingParams, generate_text, load_checkpoint
from modelzoo.engine.sampling import MAX_LOGPROBS, token_logprobs
from tests.modelzoo.gguf_factory import write_tiny_gguf
from tests.modelzoo.test_engine_support import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt():
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The float16 GGUF model, whose forward pass is batch-invariant bit for bit (test_engine_packed)."""
    return load_checkpoint(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf"), device="cpu")


def reference(ckpt, prompt_ids: list[int], out_ids: list[int], params: SamplingParams) -> list[torch.Tensor]:
    """log_softmax of the full (cache-free) forward pass's logits before each generated token, after the
    repetition penalty and the temperature as sampling applies them."""
    seq = torch.tensor([prompt_ids + out_ids])
    with torch.inference_mode():
        logits = ckpt.model(seq)[0].float()  # (T, V)
    rows = []
    for k in range(len(out_ids)):
        pos = len(prompt_ids) + k - 1
        row = logits[pos].clone()
        seen = torch.tensor(prompt_ids + out_ids[:k])
        if params.repetition_penalty != 1.0:
            scores = row.gather(0, seen)
            row = row.scatter(0, seen, torch.where(scores > 0, scores / params.repetition_penalty,
                                                   scores * params.repetition_penalty))
        if params.temperature > 0:
            row = row / params.temperature
        rows.append(torch.log_softmax(row, -1))
    return rows


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=12, logprobs=5),
    SamplingParams(max_tokens=12, logprobs=0, temperature=0.8, top_k=10, seed=3),
    SamplingParams(max_tokens=12, logprobs=20, temperature=1.3, repetition_penalty=1.3, top_p=0.9, seed=4),
], ids=["greedy", "sampled", "penalised"])
def test_logprobs_equal_a_log_softmax_of_the_full_logits(ckpt, params):
    eng = Engine(ckpt, max_batch_size=2, max_seq_len=96, kv_cache_dtype=torch.float32)
    try:
        prompt = ckpt.tokenizer.encode("the quick brown fox")
        result = eng.generate(prompt, params)
    finally:
        eng.close()
    assert result.logprobs is not None and len(result.logprobs) == len(result.token_ids) > 0
    for entry, tok, ref in zip(result.logprobs, result.token_ids, reference(ckpt, prompt, result.token_ids, params)):
        assert entry.token_id == tok  # the chosen token's entry is always there
        assert math.isclose(entry.logprob, float(ref[tok]), abs_tol=1e-4)
        assert entry.logprob <= 0.0
        assert len(entry.top) == params.logprobs
        values, ids = torch.topk(ref, params.logprobs) if params.logprobs else (torch.tensor([]), torch.tensor([]))
        assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=1e-4)
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1.0 + 1e-6
        if params.temperature == 0.0 and params.logprobs:
            assert entry.top[0][0] == tok and entry.top[0][1] == entry.logprob  # greedy took the best one


def test_no_logprobs_unless_asked(ckpt):
    eng = Engine(ckpt, max_batch_size=2, max_seq_len=96, kv_cache_dtype=torch.float32)
    try:
        seen: list[tuple] = []
        result = eng.generate(ckpt.tokenizer.encode("hi"), SamplingParams(max_tokens=5),
                              on_token=lambda *args: seen.append(args))
    finally:
        eng.close()
    assert result.logprobs is None
    assert all(len(args) == 1 for args in seen)  # on_token(token_id) as before


def test_bounds():
    SamplingParams(logprobs=0), SamplingParams(logprobs=MAX_LOGPROBS)
    for bad in (-1, MAX_LOGPROBS + 1):
        with pytest.raises(ValueError, match="logprobs"):
            SamplingParams(logprobs=bad)


def test_a_rows_logprobs_are_the_same_bits_alone_and_in_a_batch_of_16(packed):
    """Exactly what the engine computes for a row: the same logits give the same bits whatever shares the batch
    (log_softmax per row in float32). The model's logits for one row are the same bits alone and in a batch of
    16 at the same position (test_engine_packed)."""
    torch.manual_seed(0)
    logits = torch.randn(16, packed.config.vocab_size) * 4
    seen = torch.tensor([1, 2, 3])
    params = SamplingParams(temperature=0.7, repetition_penalty=1.2, logprobs=MAX_LOGPROBS)
    batch = [token_logprobs(logits[i], params, seen, 5) for i in range(16)]
    for i in (0, 7, 15):
        assert token_logprobs(logits[i : i + 1].clone()[0], params, seen, 5) == batch[i]


def test_a_requests_logprobs_alone_and_in_a_batch_of_16_through_the_engine(packed):
    """Through the engine, rows of different lengths and settings: the same tokens and the same bits.
    A long max_seq_len so that the batch's longest row and a row alone read different spans of the cache."""
    prompts = [packed.tokenizer.encode(f"prompt number {i} " + "word " * (i * 2)) for i in range(16)]

    def params(i: int) -> SamplingParams:
        if i % 2:
            return SamplingParams(max_tokens=10, logprobs=4, temperature=0.9, seed=i)
        return SamplingParams(max_tokens=10, logprobs=3)

    alone = []
    for i in range(16):
        eng = Engine(packed, max_batch_size=1, max_seq_len=256)
        try:
            alone.append(eng.generate(prompts[i], params(i)))
        finally:
            eng.close()
    eng = Engine(packed, max_batch_size=16, max_seq_len=256)
    try:
        with ThreadPoolExecutor(16) as ex:
            results = list(ex.map(lambda i: eng.generate(prompts[i], params(i)), range(16)))
    finally:
        eng.close()
    assert max(r.batch_size for r in results) > 1
    for a, b in zip(alone, results):
        assert a.token_ids == b.token_ids
        for x, y in zip(a.logprobs, b.logprobs):
            assert (x.token_id, x.logprob, x.top) == (y.token_id, y.logprob, y.top)


def test_generate_text_gives_openai_entries_streamed_and_in_the_result(ckpt):
    eng = Engine(ckpt, max_batch_size=2, max_seq_len=96, kv_cache_dtype=torch.float32)
    try:
        streamed: list[dict] = []
        pieces: list[str] = []
        params = SamplingParams(max_tokens=8, logprobs=2)
        prompt = ckpt.tokenizer.encode("hello")
        result = generate_text(eng, ckpt.tokenizer, prompt, params, on_text=pieces.append, on_logprob=streamed.append)
        plain = generate_text(eng, ckpt.tokenizer, prompt, params)
        off = generate_text(eng, ckpt.tokenizer, prompt, SamplingParams(max_tokens=8))
    finally:
        eng.close()
    assert off.logprobs is None
    assert result.logprobs == streamed == plain.logprobs
    assert len(result.logprobs) == len(result.token_ids)
    for entry, tok in zip(result.logprobs, result.token_ids):
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["token"] == ckpt.tokenizer.decode([tok])
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        assert len(entry["top_logprobs"]) == 2
        assert all(set(alt) == {"token", "logprob", "bytes"} for alt in entry["top_logprobs"])
