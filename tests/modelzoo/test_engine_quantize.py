"""Weight-only quantization: a separate pass (quantized state dict + swapped Linear modules)."""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine import Engine, SamplingParams, load_checkpoint
from modelzoo.engine.loading import load_strict
from modelzoo.engine.model import Transformer
from modelzoo.engine.quantize import Int4Linear, Int8Linear, quantize_state_dict, swap_linears
from tests.modelzoo.gguf_factory import write_tiny_gguf
from tests.modelzoo.test_engine_support import tiny_checkpoint


def quantized_copy(model: Transformer, mode: str) -> Transformer:
    cfg = model.cfg
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("output.weight")
    with torch.device("meta"):
        q = swap_linears(Transformer(cfg), mode, dtype=torch.float32)
    load_strict(q, quantize_state_dict(state, mode, dtype=torch.float32, tie_embeddings=cfg.tie_embeddings),
                device=torch.device("cpu"), dtype=torch.float32)
    return q.eval()


@pytest.mark.parametrize(("mode", "cls", "tol"), [("int8", Int8Linear, 0.05), ("int4", Int4Linear, 0.5)])
@pytest.mark.parametrize("tied", [False, True])
def test_it_swaps_every_linear_and_stays_close_to_float(mode, cls, tol, tied):
    model = tiny_checkpoint(tie_embeddings=tied, vocab_size=96).model  # int4 wants out_features % 16 == 0
    q = quantized_copy(model, mode)
    linears = [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears == []  # the output head too, even when tied (it gets its own quantized copy)
    assert sum(isinstance(m, cls) for m in q.modules()) == 4 * model.cfg.n_layers + 1
    assert q.tok_embeddings.weight.dtype == torch.float32
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 9))
    with torch.inference_mode():
        ref, got = model(tokens), q(tokens)
    assert (got - ref).abs().max() / ref.abs().max() < tol


def test_it_rejects_an_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="quantization"):
        load_checkpoint(write_tiny_gguf(tmp_path / "t.gguf"), device="cpu", quantization="fp8")


def test_it_loads_a_gguf_as_int8_and_generates(tmp_path):
    path = write_tiny_gguf(tmp_path / "t.gguf")
    ref = load_checkpoint(path, device="cpu")
    q = load_checkpoint(path, device="cpu", quantization="int8")
    assert ref.quantization is None and q.quantization == "int8"
    assert q.model.layers[0].attention.wqkv.weight.dtype == torch.int8
    tokens = torch.tensor([[5, 70, 80, 90]])
    with torch.inference_mode():
        a, b = ref.model(tokens), q.model(tokens)
    assert (a - b).abs().max() / a.abs().max() < 0.05
    eng = Engine(q, max_batch_size=2, max_seq_len=64)
    try:
        r = eng.generate([5, 70, 80], SamplingParams(max_tokens=6, ignore_eos=True))
    finally:
        eng.close()
    assert len(r.token_ids) == 6
