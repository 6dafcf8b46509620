"""Decode attention read in place from the float16 cache (our C++ kernel): softmax attention over each row's own
positions, the same bits for a row alone, beside other rows and on any number of threads, and a model's decode step
with it matching the step that converts the cache rows for torch's products."""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine import kernels, load_checkpoint
from modelzoo.engine.engine import decode_step, prefill_step
from tests.modelzoo.gguf_factory import write_tiny_gguf


@pytest.fixture(autouse=True)
def built_kernels() -> None:
    assert kernels.available()  # a C++ compiler is part of the setup (README)


SLOTS, K, POSITIONS, HD, H = 6, 2, 96, 32, 6


def caches() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    k = (torch.randn(SLOTS, K, POSITIONS, HD, generator=generator) * 2).half()
    return k, torch.randn(SLOTS, K, POSITIONS, HD, generator=generator).half()


def attend(q, k, v, slots, lengths):
    return torch.ops.llmsite.decode_attention(q, k, v, torch.tensor(slots), torch.tensor(lengths), HD**-0.5)


def test_each_query_head_attends_softly_over_its_rows_positions_of_its_key_value_head():
    k, v = caches()
    q = torch.randn(3, H, HD) * 3
    slots, lengths = [4, 0, 2], [1, 70, 96]
    y = attend(q, k, v, slots, lengths)
    assert y.shape == (3, H, HD) and y.dtype == torch.float32
    for row, (slot, n) in enumerate(zip(slots, lengths, strict=True)):
        keys = k[slot, :, :n].double().repeat_interleave(H // K, 0)  # (H, n, hd): head h reads head h // 3
        values = v[slot, :, :n].double().repeat_interleave(H // K, 0)
        weights = torch.softmax(q[row].double()[:, None] @ keys.transpose(1, 2) * HD**-0.5, -1)
        assert (y[row].double() - (weights @ values)[:, 0]).abs().max() < 1e-5


def test_a_rows_bits_do_not_depend_on_its_neighbours_or_the_thread_count():
    k, v = caches()
    q = torch.randn(5, H, HD)
    slots, lengths = [0, 1, 2, 3, 5], [9, 96, 1, 33, 64]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(attend(q, k, v, slots, lengths))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])
    for row in range(5):
        alone = attend(q[row : row + 1], k, v, slots[row : row + 1], lengths[row : row + 1])
        assert torch.equal(alone[0], results[0][row])


def test_a_decode_step_attending_in_place_matches_the_step_over_converted_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "faster_here", lambda: True)  # as on an AVX-512 host, whatever this one is
    loaded = load_checkpoint(write_tiny_gguf(tmp_path / "t.gguf", dim=64, n_heads=4, n_kv_heads=2, hidden_dim=96))
    model = loaded.model
    assert model.attention_kernel and model.cfg.head_dim == 16
    logits = {}
    for in_place in (True, False):
        model.attention_kernel = in_place
        cache = model.make_caches(3, 64)
        with torch.inference_mode():
            for slot, n in enumerate((5, 17, 9)):  # prompts of different lengths, one prefill each
                prompt = torch.randint(0, 259, (1, n), generator=torch.Generator().manual_seed(n))
                model(prompt, prefill_step(torch.tensor([n]), torch.tensor([slot]), cache))
            step = decode_step(torch.tensor([5, 17, 9]), torch.arange(3), cache, first_slots=True)
            logits[in_place] = model(torch.tensor([[7], [8], [9]]), step)
    model.attention_kernel = True
    assert (logits[True] - logits[False]).abs().max() < 1e-4
