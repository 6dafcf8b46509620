"""Recorded decode steps (traced.py): a recorded graph gives the eager step's logits bit for bit, at cache lengths
other than the one it was recorded at, and writes the caches the same way; recording writes nothing a request
reads; an engine's greedy tokens are the same with and without graphs, and it records only the batch sizes asked
for, in a thread that close() waits for."""

from __future__ import annotations

import threading

import pytest
import torch

from modelzoo.engine import load_checkpoint
from modelzoo.engine.engine import Engine, decode_step, prefill_step
from modelzoo.engine.sampling import SamplingParams
from modelzoo.engine.traced import TracedDecode
from tests.modelzoo.gguf_factory import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_checkpoint(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf"), device="cpu")


def prefilled(model, rows: int, length: int):
    torch.manual_seed(length)
    caches = model.make_caches(4, 256)
    prompt = torch.randint(0, model.cfg.vocab_size, (rows, length))
    with torch.inference_mode():
        model(prompt, prefill_step(torch.full((rows,), length), torch.arange(rows), caches))
    return caches


@pytest.mark.parametrize("rows", [1, 3])
def test_a_recorded_step_gives_the_eager_logits_and_cache_bit_for_bit_at_any_length(tiny, rows):
    model = tiny.model
    decoder = TracedDecode(model, frozenset({rows}))
    for length in (5, 70, 200):  # recorded once, on a 64-position scratch cache; then longer and shorter reads
        eager_caches, traced_caches = prefilled(model, rows, length), prefilled(model, rows, length)
        tokens = torch.randint(0, model.cfg.vocab_size, (rows, 1))
        positions = torch.arange(rows) + length - rows + 1  # rows at different positions
        with torch.inference_mode():
            expected = model(tokens, decode_step(positions, torch.arange(rows), eager_caches, first_slots=True))
            step = decode_step(positions, torch.arange(rows), traced_caches, first_slots=True)
            decoder(tokens, step)  # the first asks for the recording
            decoder.wait()
            assert decoder.ready() == {rows}
            snapshot = [cache.k.clone() for cache in traced_caches]
            got = decoder(tokens, step)
        assert torch.equal(got, expected)
        assert all(torch.equal(a.k, b.k) and torch.equal(a.v, b.v) for a, b in zip(traced_caches, eager_caches))
        if length == 5:  # the recording (on its scratch caches) wrote nothing here; the graph's run wrote the same
            assert all(torch.equal(cache.k, before) for cache, before in zip(traced_caches, snapshot))
    decoder.close()


def test_only_the_batch_sizes_asked_for_are_recorded(tiny):
    model = tiny.model
    decoder = TracedDecode(model, frozenset({1}))
    caches = prefilled(model, 2, 8)
    with torch.inference_mode():
        decoder(torch.zeros(2, 1, dtype=torch.long), decode_step(torch.tensor([8, 8]), torch.arange(2), caches,
                                                                 first_slots=True))
        decoder(torch.zeros(1, 1, dtype=torch.long), decode_step(torch.tensor([8]), torch.tensor([1]), caches,
                                                                 first_slots=False))  # not in slot 0: eager
    decoder.close()
    assert decoder.ready() == set()


def test_an_engine_gives_the_same_greedy_tokens_with_and_without_recorded_steps(tiny):
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    prompt = [5, 17, 3, 99, 42, 7]
    eager = Engine(tiny, max_batch_size=4, max_seq_len=128, recorded_batch_sizes=frozenset())
    expected = eager.generate(prompt, params).token_ids
    eager.close()

    engine = Engine(tiny, max_batch_size=4, max_seq_len=128)
    first = engine.generate(prompt, params).token_ids  # eager at first, on the graph once it is recorded
    engine.decoder.wait()
    assert engine.decoder.ready() == {1}
    again = engine.generate(prompt, params).token_ids  # every step on the graph
    together = []  # two at once: eager steps of 2 rows, then the one left alone on the graph
    threads = [threading.Thread(target=lambda n=n: together.append(
        engine.generate(prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)).token_ids))
        for n in (10, 40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.close()
    assert first == again == expected
    assert sorted(together, key=len) == [expected[:10], expected]


def test_close_waits_for_a_recording_under_way(tiny):
    engine = Engine(tiny, max_batch_size=2, max_seq_len=64)
    engine.generate([1, 2, 3], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    engine.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("llm-trace")]
