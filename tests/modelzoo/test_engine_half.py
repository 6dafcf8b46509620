"""float16 on CPU: wide products take the float32 path, narrow ones the float16 kernels, and
both agree; cache rows are read back through the shared float32 buffer unchanged."""

from __future__ import annotations

import torch

from modelzoo.engine.half_linear import MAX_FLOAT16_ROWS, HalfLinear, use_half_linears
from modelzoo.engine.model import KVCache


def half_linear(in_features: int = 64, out_features: int = 48) -> HalfLinear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=True).half()
    return use_half_linears(torch.nn.Sequential(layer))[0]


def test_it_turns_linears_into_half_linears_keeping_their_weights():
    layer = half_linear()
    assert type(layer) is HalfLinear and layer.weight.dtype == torch.float16


def test_a_wide_product_equals_the_same_rows_taken_a_few_at_a_time():
    layer = half_linear()
    x = torch.randn(MAX_FLOAT16_ROWS * 3 + 5, 64).half()
    wide = layer(x)  # float32 path
    narrow = torch.cat([layer(x[i : i + 2]) for i in range(0, len(x), 2)])  # float16 kernels
    assert wide.dtype == narrow.dtype == torch.float16
    exact = (x.double() @ layer.weight.double().T + layer.bias.double())
    assert torch.allclose(wide.double(), exact, rtol=2e-3, atol=2e-3)
    assert torch.allclose(narrow.double(), exact, rtol=2e-3, atol=2e-3)
    assert (wide != narrow).float().mean() < 0.05  # the same float16 value nearly everywhere


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
