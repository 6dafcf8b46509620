"""A Hugging Face safetensors directory loads through its own path (config.json, tokenizer.json, template)
and gives the same greedy tokens as the GGUF it was written from: the golden outputs."""
import json
from pathlib import Path

import pytest

from modelzoo.engine import Engine, SamplingParams, default_checkpoint_path, inspect_checkpoint, load_checkpoint
from tests.modelzoo.hf_dir_factory import write_hf_dir

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_greedy.json").read_text())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return write_hf_dir(default_checkpoint_path(), tmp_path_factory.mktemp("smollm2-hf"))


@pytest.mark.slow
def test_it_reads_the_directory_as_safetensors(hf_dir):
    info = inspect_checkpoint(hf_dir)
    assert info.format == "safetensors"
    assert info.quantization == "F32"
    assert info.parameter_count == 134515008
    assert info.config.tie_embeddings and info.config.n_kv_heads == 3


@pytest.mark.slow
def test_it_generates_the_golden_greedy_tokens_from_safetensors(hf_dir):
    loaded = load_checkpoint(hf_dir, device="cpu")
    engine = Engine(loaded, max_batch_size=2)
    try:
        for case in GOLDEN["cases"][:2]:
            text = loaded.chat_template.render(case["messages"])
            assert loaded.tokenizer.encode(text) == case["prompt_token_ids"], case["name"]
            result = engine.generate(case["prompt_token_ids"], SamplingParams(max_tokens=GOLDEN["max_new_tokens"]))
            golden = case["new_token_ids"]
            expected = golden[:-1] if golden[-1] in loaded.tokenizer.eos_token_ids else golden
            assert result.token_ids == expected, case["name"]
    finally:
        engine.close()
