"""Engine behaviour on a tiny random-weight model (CPU): cache, continuous batching, ids out, stops through
on_token and generate_text, errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from modelzoo.engine import Engine, SamplingParams, Step, generate_text
from tests.modelzoo.test_engine_support import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt():
    return tiny_checkpoint()


@pytest.fixture
def engine(ckpt):
    eng = Engine(ckpt, max_batch_size=4, max_seq_len=96, kv_cache_dtype=torch.float32)
    yield eng
    eng.close()


PROMPTS = ["hello there", "a", "the quick brown fox jumps", "123 go!", "zz top\nnext line", "why?"]


def enc(ckpt, text: str) -> list[int]:
    return ckpt.tokenizer.encode(text)


def test_it_computes_logits_of_the_right_shape(ckpt):
    tokens = torch.randint(1, ckpt.config.vocab_size, (3, 7))
    assert ckpt.model(tokens).shape == (3, 7, ckpt.config.vocab_size)


def test_it_decodes_with_the_cache_like_a_full_forward(ckpt):
    model, cfg = ckpt.model, ckpt.config
    caches = model.make_caches(2, 32, torch.float32)
    seq = torch.randint(1, cfg.vocab_size, (1, 12))
    with torch.inference_mode():
        full = model(seq)  # (1, 12, V), no cache
        P = 5
        j = torch.arange(P)
        mask = (j[None, :] <= j[:, None])[None, None]  # (1, 1, P, P)
        slots = torch.tensor([1])
        pre = model(seq[:, :P], Step(positions=torch.arange(P)[None], slots=slots, mask=mask, caches=caches))
        torch.testing.assert_close(pre, full[:, :P], atol=1e-4, rtol=1e-4)
        for t in range(P, 12):
            step_mask = (torch.arange(t + 1) <= t)[None, None, None]  # (1, 1, 1, t+1)
            step = Step(positions=torch.tensor([[t]]), slots=slots, mask=step_mask, caches=caches)
            out = model(seq[:, t : t + 1], step)
            torch.testing.assert_close(out[:, 0], full[:, t], atol=1e-4, rtol=1e-4)


def run_alone(ckpt, prompt: str, params: SamplingParams) -> list[int]:
    eng = Engine(ckpt, max_batch_size=1, max_seq_len=96, kv_cache_dtype=torch.float32)
    try:
        return eng.generate(enc(ckpt, prompt), params).token_ids
    finally:
        eng.close()


@pytest.mark.parametrize("sampled", [False, True])
def test_it_batches_like_one_at_a_time(ckpt, engine, sampled):
    def params(i: int) -> SamplingParams:
        if sampled:
            return SamplingParams(temperature=0.9, top_k=20, top_p=0.95, seed=100 + i, max_tokens=24 + 5 * i)
        return SamplingParams(max_tokens=24 + 5 * i)

    expected = [run_alone(ckpt, p, params(i)) for i, p in enumerate(PROMPTS)]

    def staggered(i: int) -> tuple[list[int], int]:
        time.sleep(0.003 * i)  # join a running batch at different steps (long enough runs to overlap on a busy machine)
        r = engine.generate(enc(ckpt, PROMPTS[i]), params(i))
        return r.token_ids, r.batch_size

    with ThreadPoolExecutor(len(PROMPTS)) as ex:
        got = list(ex.map(staggered, range(len(PROMPTS))))
    assert [ids for ids, _ in got] == expected
    assert max(b for _, b in got) > 1  # they really shared forward passes


def test_it_reproduces_a_seeded_sample(engine, ckpt):
    p = SamplingParams(temperature=1.2, seed=7, max_tokens=30)
    a = engine.generate(enc(ckpt, "seed"), p)
    b = engine.generate(enc(ckpt, "seed"), p)
    c = engine.generate(enc(ckpt, "seed"), SamplingParams(temperature=1.2, seed=8, max_tokens=30))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def text(engine, ckpt, prompt: str, params: SamplingParams, **kwargs):
    return generate_text(engine, ckpt.tokenizer, enc(ckpt, prompt), params, **kwargs)


def test_it_gives_ids_and_no_text(engine, ckpt):
    r = engine.generate(enc(ckpt, "ids"), SamplingParams(max_tokens=8))
    assert len(r.token_ids) == 8 and r.finish_reason == "length"
    assert not hasattr(r, "text")


def test_it_reports_each_token_and_stops_when_on_token_says_so(engine, ckpt):
    full = engine.generate(enc(ckpt, "stop here"), SamplingParams(max_tokens=40))
    seen: list[int] = []

    def on_token(token_id: int) -> bool:
        seen.append(token_id)
        return len(seen) == 7

    r = engine.generate(enc(ckpt, "stop here"), SamplingParams(max_tokens=40), on_token=on_token)
    assert r.finish_reason == "stop"
    assert r.token_ids == seen == full.token_ids[:7]


def test_it_truncates_at_a_stop_string(engine, ckpt):
    full = text(engine, ckpt, "stop here", SamplingParams(max_tokens=40))
    assert full.finish_reason == "length" and len(full.text) == 40
    stop = full.text[10:13]
    cut = full.text.index(stop)
    r = text(engine, ckpt, "stop here", SamplingParams(max_tokens=40, stop=(stop, "\0never")))
    assert r.finish_reason == "stop"
    assert r.text == full.text[:cut]
    assert r.token_ids == full.token_ids[: cut + len(stop)]  # the ids that spelled the stop string, and no more


def test_it_streams_deltas_that_join_to_the_final_text(engine, ckpt):
    full = text(engine, ckpt, "stream", SamplingParams(max_tokens=40))
    stop = full.text[20:24]
    for params in [SamplingParams(max_tokens=40), SamplingParams(max_tokens=40, stop=(stop,))]:
        deltas: list[str] = []
        r = text(engine, ckpt, "stream", params, on_text=deltas.append)
        assert "".join(deltas) == r.text
        assert len(deltas) > 1
    assert stop not in r.text and r.finish_reason == "stop"


def test_it_frees_slots_so_many_requests_complete(ckpt):
    eng = Engine(ckpt, max_batch_size=16, max_seq_len=64, kv_cache_dtype=torch.float32)
    try:
        with ThreadPoolExecutor(40) as ex:
            results = list(
                ex.map(lambda i: eng.generate(enc(ckpt, f"req {i}"), SamplingParams(max_tokens=3 + i % 7)), range(40))
            )
        assert len(results) == 40
        assert all(r.finish_reason in ("length", "stop") for r in results)
        assert max(r.batch_size for r in results) <= 16
    finally:
        eng.close()


def test_it_cancels_and_keeps_partial_text(engine, ckpt):
    full = text(engine, ckpt, "cancel me", SamplingParams(max_tokens=40))
    seen: list[str] = []
    r = text(engine, ckpt, "cancel me", SamplingParams(max_tokens=40), on_text=seen.append,
             should_cancel=lambda: len(seen) >= 5)
    assert r.finish_reason == "cancelled"
    assert 5 <= len(r.token_ids) < 40
    assert r.text and full.text.startswith(r.text)


def test_it_times_out_at_the_deadline(engine, ckpt):
    r = engine.generate(enc(ckpt, "late"), SamplingParams(max_tokens=40), deadline=time.monotonic() - 1)
    assert r.finish_reason == "timeout" and r.token_ids == []
    slow = engine.generate(
        enc(ckpt, "late"),
        SamplingParams(max_tokens=80),
        on_token=lambda _: time.sleep(0.01),
        deadline=time.monotonic() + 0.1,
    )
    assert slow.finish_reason == "timeout" and 0 < len(slow.token_ids) < 80


def test_it_rejects_prompts_that_cannot_fit(engine, ckpt):
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.generate(enc(ckpt, "x" * 90), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError):
        engine.generate([], SamplingParams())


def test_it_fails_requests_when_the_forward_pass_raises(ckpt, monkeypatch):
    eng = Engine(ckpt, max_batch_size=4, max_seq_len=64, kv_cache_dtype=torch.float32)
    try:
        real = type(ckpt.model).forward
        calls = {"n": 0}

        def flaky(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("boom")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(type(ckpt.model), "forward", flaky)
        with pytest.raises(RuntimeError, match="boom"):
            eng.generate(enc(ckpt, "fail"), SamplingParams(max_tokens=10))
        monkeypatch.setattr(type(ckpt.model), "forward", real)
        # The engine keeps serving, and the failed request's slot came back.
        assert eng.generate(enc(ckpt, "ok"), SamplingParams(max_tokens=3)).finish_reason == "length"
        assert sorted(eng._free_slots) == [0, 1, 2, 3]
    finally:
        eng.close()


def test_it_fails_only_the_request_whose_callback_raises(engine, ckpt):
    def bad(_: int) -> None:
        raise KeyError("callback")

    results: dict[str, object] = {}

    def good() -> None:
        results["good"] = engine.generate(enc(ckpt, "fine"), SamplingParams(max_tokens=20))

    t = threading.Thread(target=good)
    t.start()
    with pytest.raises(KeyError):
        engine.generate(enc(ckpt, "bad"), SamplingParams(max_tokens=20), on_token=bad)
    t.join()
    assert results["good"].finish_reason == "length"


def test_it_reports_timings(engine, ckpt):
    r = engine.generate(enc(ckpt, "time"), SamplingParams(max_tokens=10))
    assert r.prompt_token_ids == enc(ckpt, "time")
    assert 0 < r.ttft_s <= r.elapsed_s
    assert r.tokens_per_s > 0 and r.batch_size >= 1


def test_it_refuses_work_after_close(ckpt):
    eng = Engine(ckpt, max_batch_size=2, max_seq_len=64)
    eng.close()
    with pytest.raises(RuntimeError):
        eng.generate(enc(ckpt, "x"), SamplingParams(max_tokens=2))
