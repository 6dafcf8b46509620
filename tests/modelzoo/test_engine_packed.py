"""float16 weights on CPU: FBGEMM's packed products on float32 inputs, each row computed the same way
whatever shares the call; only the packed copy is kept (the weight reads back from it, assigning one repacks); decode attention and the whole
model are batch-invariant bit for bit; cache rows are read back through the shared float32 buffer."""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine import load_checkpoint
from modelzoo.engine.engine import decode_step, prefill_step
from modelzoo.engine.model import KVCache
from modelzoo.engine.packed_linear import PackedFloat16Linear, use_packed_float16
from tests.modelzoo.gguf_factory import write_tiny_gguf


def packed_linear(in_features: int = 64, out_features: int = 48) -> PackedFloat16Linear:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=True).half())
    return use_packed_float16(model)[0]


def test_it_keeps_only_the_packed_copy_and_reads_the_float16_weight_back_exactly():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True).half()
    original = linear.weight.detach().clone()
    layer = use_packed_float16(torch.nn.Sequential(linear))[0]
    assert type(layer) is PackedFloat16Linear and "weight" not in layer._parameters
    assert layer.weight.dtype == torch.float16 and torch.equal(layer.weight, original)
    assert torch.equal(layer.state_dict()["weight"], original) and "bias" in layer.state_dict()


def test_it_computes_in_float32_from_the_float16_weights_and_each_row_alike_in_any_batch():
    layer = packed_linear()
    x = torch.randn(16, 3, 64)
    y = layer(x)
    assert y.dtype == torch.float32
    exact = x.double() @ layer.weight.double().T + layer.bias.double()
    assert torch.allclose(y.double(), exact, rtol=1e-5, atol=1e-5)
    for i in (0, 7, 15):
        assert torch.equal(layer(x[i : i + 1]), y[i : i + 1])  # bit for bit, alone or in the batch


def test_assigning_the_weight_repacks_it():
    layer = packed_linear()
    x = torch.randn(2, 64)
    before = layer(x)
    weight = layer.weight
    weight[:8] += 1.0  # through a view, like a LoRA merge of some rows
    layer.weight = weight
    after = layer(x)
    assert not torch.allclose(before[:, :8], after[:, :8]) and torch.equal(before[:, 8:], after[:, 8:])
    assert torch.equal(layer.weight, weight)
    assert torch.allclose(after.double(), x.double() @ weight.double().T + layer.bias.double(), atol=1e-4)


def test_a_weight_tied_to_the_embeddings_stays_the_embeddings_parameter():
    embedding = torch.nn.Embedding(48, 64).half()
    head = torch.nn.Linear(64, 48, bias=False).half()
    head.weight = embedding.weight
    model = use_packed_float16(torch.nn.ModuleDict({"embedding": embedding, "head": head}))
    assert model["head"].weight is model["embedding"].weight
    x = torch.randn(3, 64)
    assert torch.allclose(model["head"](x).double(), x.double() @ embedding.weight.double().T, atol=1e-4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_checkpoint(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf"), device="cpu")


def test_a_rows_logits_are_the_same_bits_alone_and_in_a_batch_of_16(tiny):
    model = tiny.model
    assert isinstance(model.output, PackedFloat16Linear) and model.activation_dtype == torch.float32
    torch.manual_seed(0)
    B, T = 16, 12
    tokens = torch.randint(0, tiny.config.vocab_size, (B, T))
    next_tokens = torch.randint(0, tiny.config.vocab_size, (B, 1))

    def run(rows: slice) -> torch.Tensor:
        n = rows.stop - rows.start
        caches = model.make_caches(16, 32)
        with torch.inference_mode():
            model(tokens[rows], prefill_step(torch.full((n,), T), torch.arange(n), caches))
            step = decode_step(torch.full((n,), T), torch.arange(n), caches, first_slots=True)
            return model(next_tokens[rows], step)[:, -1]

    batch = run(slice(0, 16))
    for r in (0, 5, 15):
        assert torch.equal(run(slice(r, r + 1))[0], batch[r])


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


def test_each_row_has_the_same_bits_in_products_of_any_row_count():
    # FBGEMM's AVX2 kernels of 1 and 2 rows round differently (rows_computed_apart): such products are padded.
    layer = packed_linear(in_features=576, out_features=960)
    x = torch.randn(20, 576)
    with torch.inference_mode():
        reference = layer(x)
        for rows in range(1, 20):
            assert torch.equal(layer(x[:rows]), reference[:rows]), f"{rows} rows"
            assert torch.equal(layer(x[rows - 1 : rows][None]), reference[rows - 1 : rows][None])
