"""Products straight from a GGUF file's Q4_1 / Q8_0 blocks (our C++ kernel): exact float32 dequantization, each row
computed alike in any batch, weights read back exactly, and a GGUF load that serves those weights from the blocks and
packs the rest for FBGEMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from modelzoo.engine import kernels, load_checkpoint
from modelzoo.engine.block_linear import BlockLinear, fused_blocks, use_block_linears
from modelzoo.engine.packed_linear import PackedFloat16Linear
from tests.modelzoo.gguf_factory import write_tiny_gguf


@pytest.fixture(autouse=True)
def built_kernels() -> None:
    assert kernels.available()  # a C++ compiler is part of the setup (README)


TYPES = ("Q4_1", "Q8_0")


def stored(ggml_type: str, out_features: int = 96, in_features: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks as the file stores them, their weights dequantized by the gguf package in float32)."""
    weights = np.random.default_rng(seed).standard_normal((out_features, in_features)).astype(np.float32)
    blocks = quantize(weights, GGMLQuantizationType[ggml_type])
    return torch.from_numpy(blocks), torch.from_numpy(dequantize(blocks, GGMLQuantizationType[ggml_type]).astype(np.float32))


def block_layer(ggml_type: str, **kwargs: int) -> tuple[BlockLinear, torch.Tensor]:
    blocks, weights = stored(ggml_type, **kwargs)
    model = torch.nn.Sequential(torch.nn.Linear(weights.shape[1], weights.shape[0], bias=False).half())
    use_block_linears(model, {"0": (ggml_type, blocks)})
    return model[0], weights


@pytest.mark.parametrize("ggml_type", TYPES)
def test_products_are_float32_products_of_the_exactly_dequantized_weights(ggml_type):
    layer, weights = block_layer(ggml_type)
    x = torch.randn(5, 3, weights.shape[1])
    y = layer(x)
    assert y.shape == (5, 3, weights.shape[0]) and y.dtype == torch.float32
    exact = x.double() @ weights.double().T
    assert (y.double() - exact).abs().max() < 1e-4
    # no less exact than torch's float32 product over the same weights
    assert (y.double() - exact).abs().max() <= 2 * ((x @ weights.T).double() - exact).abs().max()


@pytest.mark.parametrize("ggml_type", TYPES)
def test_each_row_has_the_same_bits_in_products_of_any_row_count(ggml_type):
    layer, weights = block_layer(ggml_type, out_features=200, in_features=576)
    x = torch.randn(19, weights.shape[1])
    alone = [layer(x[i : i + 1])[0] for i in range(19)]
    for rows in range(1, 20):
        y = layer(x[:rows])
        assert all(torch.equal(y[i], alone[i]) for i in range(rows)), f"a row differs in a product of {rows} rows"


@pytest.mark.parametrize("ggml_type", TYPES)
def test_a_prompts_positions_are_multiplied_exactly_and_alike_on_any_number_of_threads(ggml_type):
    layer, weights = block_layer(ggml_type, out_features=200, in_features=576)
    x = torch.randn(1, 40, weights.shape[1])  # one prompt of 40 positions: the dequantized chunks' path
    threads = torch.get_num_threads()
    try:
        products = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            products.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(products[0], p) for p in products[1:])
    assert (products[0].double() - x.double() @ weights.double().T).abs().max() < 1e-3


@pytest.mark.parametrize("ggml_type", TYPES)
def test_the_weight_reads_back_exactly_and_assigning_one_packs_it_for_fbgemm(ggml_type):
    layer, weights = block_layer(ggml_type)
    assert "weight" not in layer._parameters and "blocks" not in layer.state_dict()
    assert layer.weight.dtype == torch.float16 and torch.equal(layer.weight, weights.half())
    assert torch.equal(layer.state_dict()["weight"], weights.half())
    merged = layer.weight + 0.5  # what a LoRA merge does: read, change, assign
    layer.weight = merged
    assert type(layer) is PackedFloat16Linear and not hasattr(layer, "blocks")
    assert torch.equal(layer.weight, merged)


def test_blocks_of_a_fused_weight_are_fused_only_when_every_part_has_the_kernels_type(tmp_path):
    blocks = {name: ("Q4_1", torch.zeros(rows, 20, dtype=torch.uint8)) for name, rows in [
        ("layers.0.attention.wq.weight", 4), ("layers.0.attention.wk.weight", 2), ("layers.0.attention.wv.weight", 2)]}
    blocks["layers.0.feed_forward.w1.weight"] = ("Q4_1", torch.zeros(8, 20, dtype=torch.uint8))
    blocks["layers.0.feed_forward.w3.weight"] = ("Q8_0", torch.zeros(8, 34, dtype=torch.uint8))
    blocks["layers.0.attention.wo.weight"] = ("Q4_0", torch.zeros(4, 18, dtype=torch.uint8))
    blocks["tok_embeddings.weight"] = ("Q8_0", torch.ones(10, 34, dtype=torch.uint8))
    cfg = load_checkpoint(write_tiny_gguf(tmp_path / "t.gguf", n_layers=1)).config
    fused = fused_blocks(blocks, cfg)
    assert sorted(fused) == ["layers.0.attention.wqkv", "output"]
    assert fused["layers.0.attention.wqkv"][1].shape == (8, 20)
    assert fused["output"][0] == "Q8_0" and cfg.tie_embeddings


def test_a_gguf_serves_its_q4_1_and_q8_0_weights_from_their_blocks_and_packs_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "faster_here", lambda: True)  # as on an AVX-512 host, whatever this one is
    mixed = {"ffn_gate.weight": "Q4_1", "ffn_up.weight": "Q8_0", "attn_output.weight": "Q4_0", "": "Q4_1"}
    loaded = load_checkpoint(write_tiny_gguf(tmp_path / "m.gguf", dim=64, hidden_dim=96, weight_types=mixed))
    layer = loaded.model.layers[0]
    assert type(layer.attention.wqkv) is BlockLinear and type(layer.feed_forward.w2) is BlockLinear
    assert type(loaded.model.output) is BlockLinear  # the head tied to the Q4_1 embedding table
    assert type(layer.feed_forward.w13) is PackedFloat16Linear  # gate and up differ in type
    assert type(layer.attention.wo) is PackedFloat16Linear  # a type the kernel does not read
    assert type(load_checkpoint(tmp_path / "m.gguf", block_kernels=False).model.output) is PackedFloat16Linear


def test_a_model_served_from_blocks_computes_float32_products_over_the_files_exact_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "faster_here", lambda: True)
    types = {"ffn_down.weight": "Q8_0", "token_embd.weight": "Q8_0", "": "Q4_1"}
    path = write_tiny_gguf(tmp_path / "q.gguf", dim=64, hidden_dim=96, weight_types=types)
    served, packed = load_checkpoint(path), load_checkpoint(path, block_kernels=False)
    assert all(type(m) is not PackedFloat16Linear for m in served.model.modules())
    reference = load_checkpoint(path, dtype=torch.float32).model  # the dequantized weights in float32
    table = reference.tok_embeddings.weight.detach()
    reference.output.weight = torch.nn.Parameter(table.clone())  # the head: exact, like the blocks
    reference.tok_embeddings.weight = torch.nn.Parameter(table.half().float())  # lookups: the float16 table
    tokens = torch.randint(0, 259, (2, 12))
    with torch.inference_mode():
        ours, exact, fp16 = served.model(tokens), reference(tokens), packed.model(tokens)
    assert (ours - exact).abs().max() < 1e-4 < (fp16 - exact).abs().max()  # FBGEMM's copy is float16-rounded
