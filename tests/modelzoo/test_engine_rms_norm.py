"""RMSNorm of float32 rows by our C++ kernel: torch's values within float32 rounding, each row alike in any batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelzoo.engine import kernels
from modelzoo.engine.model import RMSNorm


@pytest.fixture(autouse=True)
def built_kernels() -> None:
    assert kernels.available()  # a C++ compiler is part of the setup (README)


def test_it_gives_torchs_rms_norm_and_each_row_alike_alone_or_in_a_batch():
    norm = RMSNorm(64, 1e-5)
    norm.weight.data = torch.randn(64)
    norm.kernel = True
    x = torch.randn(5, 3, 64) * 4
    with torch.inference_mode():
        y = norm(x)
        assert y.shape == x.shape
        assert torch.allclose(y, F.rms_norm(x, (64,), norm.weight, 1e-5), rtol=1e-5, atol=1e-6)
        assert all(torch.equal(norm(x[i : i + 1, j : j + 1])[0, 0], y[i, j]) for i in range(5) for j in range(3))


def test_a_model_normalizes_with_the_kernel_only_where_rows_are_a_multiple_of_16_values():
    from modelzoo.engine.config import ModelConfig
    from modelzoo.engine.model import Transformer

    for dim, expected in ((64, True), (40, False)):
        cfg = ModelConfig(dim=dim, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=32, max_seq_len=16)
        model = Transformer(cfg)
        model.use_kernels()
        assert model.attention_kernel and {m.kernel for m in model.modules() if isinstance(m, RMSNorm)} == {expected}


def test_rows_that_need_gradients_are_normalized_by_torchs_differentiable_op():
    norm = RMSNorm(64, 1e-5)
    norm.kernel = True
    x = torch.randn(2, 64, requires_grad=True)
    norm(x).sum().backward()  # finetuning trains through the norms
    assert x.grad is not None and x.grad.shape == x.shape
