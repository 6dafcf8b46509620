"""float16 on CPU: decode products in float16, prefill products from a bfloat16 copy that
follows in-place weight changes; cache rows are read back through the shared float32 buffer."""

from __future__ import annotations

import torch

from modelzoo.engine.half_linear import HalfLinear, use_half_linears
from modelzoo.engine.model import KVCache


def half_linear(in_features: int = 64, out_features: int = 48) -> HalfLinear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=True).half()
    return use_half_linears(torch.nn.Sequential(layer))[0]


def test_it_turns_linears_into_half_linears_keeping_their_weights():
    layer = half_linear()
    assert type(layer) is HalfLinear and layer.weight.dtype == torch.float16


def test_one_position_per_row_runs_in_float16_and_several_from_the_bfloat16_copy():
    layer = half_linear()
    x = torch.randn(4, 7, 64).half()
    exact = x.double() @ layer.weight.double().T + layer.bias.double()
    decode = torch.cat([layer(x[:, t : t + 1]) for t in range(7)], dim=1)  # (4, 1, 64) at a time
    prefill = layer(x)  # (4, 7, 64) at once
    assert decode.dtype == prefill.dtype == torch.float16
    assert torch.allclose(decode.double(), exact, rtol=2e-3, atol=2e-3)  # float16 accuracy
    assert torch.allclose(prefill.double(), exact, rtol=3e-2, atol=3e-2)  # bfloat16 accuracy
    assert not torch.equal(decode, prefill)  # so the paths really differ
    bf16 = x.bfloat16().double() @ layer.weight.bfloat16().double().T + layer.bias.bfloat16().double()
    assert torch.allclose(prefill.double(), bf16, rtol=1e-2, atol=1e-2)


def test_the_bfloat16_copy_follows_an_in_place_change_of_the_weight():
    layer = half_linear()
    x = torch.randn(1, 5, 64).half()
    before = layer(x)
    with torch.no_grad():
        layer.weight[:8] += 1.0  # through a view, like a LoRA merge of some rows
    after = layer(x)
    expected = (x.float() @ layer.weight.float().T + layer.bias.float())
    assert not torch.allclose(before[..., :8], after[..., :8])
    assert torch.allclose(after.float(), expected, rtol=3e-2, atol=5e-2)


def test_cache_rows_read_in_float32_through_the_shared_buffer_equal_a_plain_conversion():
    buffer = torch.empty(2, 4 * 2 * 16 * 8)
    cache = KVCache(4, 2, 16, 8, torch.float16, torch.device("cpu"), read_buffer=buffer)
    k, v = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    slots, positions = torch.arange(3), torch.arange(5).expand(3, 5)
    k_rows, v_rows = cache.update(slots, positions, k, v, length=5, first_slots=True, dtype=torch.float32)
    assert k_rows.dtype == torch.float32 and k_rows.shape == (3, 2, 5, 8)
    assert torch.equal(k_rows, k.half().float()) and torch.equal(v_rows, v.half().float())
    assert k_rows.data_ptr() == buffer[0].data_ptr()  # no new allocation
    gathered, _ = cache.update(torch.tensor([2, 0]), positions[:2], k[:2], v[:2], length=5, dtype=torch.float32)
    assert torch.equal(gathered, k[:2].half().float())  # row i reads the slot it wrote
