"""Decode attention read in place from the float16 cache (our C++ kernel): each row's key and value rotated and
written as torch writes them, softmax attention over the row's own positions, the same bits for a row alone, beside
other rows and on any number of threads, and a model's decode step with it matching torch's operations."""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine import kernels, load_checkpoint
from modelzoo.engine.engine import decode_step, prefill_step
from modelzoo.engine.model import apply_rope, rope_cos_sin
from tests.modelzoo.gguf_factory import write_tiny_gguf


@pytest.fixture(autouse=True)
def built_kernels() -> None:
    assert kernels.available()  # a C++ compiler is part of the setup (README)


SLOTS, K, POSITIONS, HD, H = 6, 2, 96, 32, 6


def caches() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    k = (torch.randn(SLOTS, K, POSITIONS, HD, generator=generator) * 2).half()
    return k, torch.randn(SLOTS, K, POSITIONS, HD, generator=generator).half()


def rope(positions):
    cos, sin = rope_cos_sin(torch.tensor(positions)[:, None], HD, 10000.0, torch.float32)
    return cos.view(len(positions), HD), sin.view(len(positions), HD)


def attend(qkv, k, v, slots, positions, cos_sin=None):
    cos, sin = cos_sin or rope(positions)
    return torch.ops.llmsite.decode_attention(qkv, cos, sin, k, v, torch.tensor(slots), torch.tensor(positions),
                                              HD**-0.5).view(len(slots), H, HD)


def test_each_row_rotates_writes_its_key_and_value_and_attends_over_its_positions():
    k, v = caches()
    before_k, before_v = k.clone(), v.clone()
    qkv = torch.randn(3, (H + 2 * K) * HD) * 3
    slots, positions = [4, 0, 2], [0, 69, 95]
    cos, sin = rope(positions)
    y = attend(qkv, k, v, slots, positions, (cos, sin))
    assert y.shape == (3, H, HD) and y.dtype == torch.float32
    heads = qkv.view(3, 1, H + 2 * K, HD)
    rotated = apply_rope(heads[:, :, : H + K], cos[:, None, None], sin[:, None, None])[:, 0]  # torch's rotation
    written = torch.zeros(SLOTS, POSITIONS, dtype=torch.bool)
    for row, (slot, n) in enumerate(zip(slots, positions, strict=True)):
        assert torch.equal(k[slot, :, n], rotated[row, H:].half())  # the bits .to(float16) gives
        assert torch.equal(v[slot, :, n], heads[row, 0, H + K :].half())
        written[slot, n] = True
        keys = k[slot, :, : n + 1].double().repeat_interleave(H // K, 0)  # (H, n + 1, hd): head h reads head h // 3
        values = v[slot, :, : n + 1].double().repeat_interleave(H // K, 0)
        weights = torch.softmax(rotated[row, :H].double()[:, None] @ keys.transpose(1, 2) * HD**-0.5, -1)
        assert (y[row].double() - (weights @ values)[:, 0]).abs().max() < 1e-5
    untouched = ~written[:, None, :, None].expand_as(k)
    assert torch.equal(k[untouched], before_k[untouched]) and torch.equal(v[untouched], before_v[untouched])


def test_a_rows_bits_do_not_depend_on_its_neighbours_or_the_thread_count():
    qkv = torch.randn(5, (H + 2 * K) * HD)
    slots, positions = [0, 1, 2, 3, 5], [8, 95, 0, 32, 63]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(attend(qkv, *caches(), slots, positions))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])
    for row in range(5):
        alone = attend(qkv[row : row + 1], *caches(), slots[row : row + 1], positions[row : row + 1])
        assert torch.equal(alone[0], results[0][row])


def test_a_position_outside_the_cache_is_refused():
    with pytest.raises(RuntimeError, match="writes slot 0 at position 96"):
        attend(torch.zeros(1, (H + 2 * K) * HD), *caches(), [0], [POSITIONS])


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
