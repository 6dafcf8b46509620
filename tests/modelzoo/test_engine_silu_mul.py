"""The feed-forward's gate, silu(gate) * up, by our C++ kernel: torch's values within float32 rounding, each row
alike in any batch, and torch's differentiable ops wherever gradients are needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelzoo.engine import kernels
from modelzoo.engine.config import ModelConfig
from modelzoo.engine.model import FeedForward, Transformer


@pytest.fixture(autouse=True)
def built_kernels() -> None:
    assert kernels.available()  # a C++ compiler is part of the setup (README)


def test_it_gives_torchs_gate_over_the_whole_float_range_and_each_row_alike_alone_or_in_a_batch():
    gate_up = torch.randn(5, 3, 96) * 8
    gate_up[0, 0, :6] = torch.tensor([-200.0, -90.0, -1e-30, 0.0, 90.0, 300.0])  # past exp's clamps, and zero
    y = torch.ops.llmsite.silu_mul(gate_up)
    gate, up = gate_up.split(48, dim=-1)
    assert y.shape == (5, 3, 48) and torch.isfinite(y).all()
    assert torch.allclose(y, F.silu(gate) * up, rtol=2e-6, atol=1e-30)
    assert all(torch.equal(torch.ops.llmsite.silu_mul(gate_up[i : i + 1, j])[0], y[i, j])
               for i in range(5) for j in range(3))


def test_a_model_gates_with_the_kernel_only_for_a_hidden_size_of_16k_values():
    for hidden, expected in ((64, True), (40, False)):
        cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=hidden, vocab_size=32, max_seq_len=16)
        model = Transformer(cfg)
        model.use_kernels()
        assert {m.kernel for m in model.modules() if isinstance(m, FeedForward)} == {expected}


def test_the_kernel_serves_inference_and_torchs_ops_serve_training():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=32, max_seq_len=16)
    ffn = FeedForward(cfg)
    x = torch.randn(2, 3, 32)
    with torch.inference_mode():
        plain = ffn(x)
        ffn.kernel = True
        gated = ffn(x)
    assert torch.allclose(gated, plain, rtol=1e-5, atol=1e-6)
    ffn(x.requires_grad_()).sum().backward()  # finetuning trains through the feed-forward
    assert x.grad is not None and ffn.w13.weight.grad is not None
