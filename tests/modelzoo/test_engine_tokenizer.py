"""Tokenizer and chat template: exact ids pinned against Hugging Face transformers.

The SmolLM2 ids below were produced by transformers 5.24.0 loading the bundled GGUF
(AutoTokenizer.from_pretrained(dir, gguf_file=...)); our byte-level BPE matched it on
a wider corpus (code, digits, unicode, whitespace runs, control tokens) as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest

from modelzoo.engine import default_checkpoint_path, inspect_checkpoint
from modelzoo.engine.chat_template import ChatTemplate
from modelzoo.engine.tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, tokenizer_from_gguf


@pytest.fixture(scope="module")
def smollm():
    return inspect_checkpoint(default_checkpoint_path())


# (text, ids from transformers)
PINNED = [
    ("Hello world 12345 <|im_start|>user\n  x=1", [19556, 905, 216, 33, 34, 35, 36, 37, 216, 1, 4093, 3805, 1792, 45, 33]),
]


@pytest.fixture(scope="module")
def hf_pinned_ids() -> list[tuple[str, list[int]]]:
    data = json.loads((Path(__file__).parent / "golden" / "smollm2_tokenizer.json").read_text())
    return [(case["text"], case["ids"]) for case in data["cases"]]


def test_it_reads_the_bundled_config(smollm):
    c = smollm.config
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim) == (49152, 576, 30, 9, 3, 1536)
    assert c.max_seq_len == 8192 and c.tie_embeddings and not c.qkv_bias
    assert c.rope_theta == 100000.0
    assert smollm.format == "gguf" and smollm.quantization == "Q4_1"
    assert smollm.parameter_count == 134515008


def test_it_matches_transformers_ids(smollm, hf_pinned_ids):
    for text, ids in PINNED + hf_pinned_ids:
        assert smollm.tokenizer.encode(text) == ids, text


def test_it_encodes_control_tokens_as_single_ids(smollm):
    tok = smollm.tokenizer
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.encode("<|endoftext|>") == [0]
    assert tok.eos_token_ids == frozenset({2})
    assert tok.bos_token_id == 1 and not tok.add_bos


def test_it_round_trips_text(smollm):
    tok = smollm.tokenizer
    for text in ["café 日本語 😀", "def f(x):\n    return x\n", "  spaces\t\ttabs\n\n", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.decode(tok.encode(text)) == text


def test_it_renders_the_checkpoint_chat_template(smollm):
    text = smollm.chat_template.render([{"role": "user", "content": "hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = smollm.chat_template.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], add_generation_prompt=False
    )
    assert with_system == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_it_sandboxes_templates():
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        evil.render([{"role": "user", "content": "x"}])
    mutating = ChatTemplate("{% set _ = messages.append({'role': 'x'}) %}{{ messages|length }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        mutating.render([{"role": "user", "content": "x"}])


def test_it_offers_hf_template_helpers():
    t = ChatTemplate(
        "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}"
        "{{ messages[0]|tojson }}|{{ strftime_now('%Y')|length }}|{{ bos_token }}",
        special_tokens={"bos_token": "<s>"},
    )
    assert t.render([{"role": "user", "content": "é"}]) == '{"role": "user", "content": "é"}|4|<s>'
    with pytest.raises(jinja2.exceptions.TemplateError, match="one message only"):
        t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# --- SentencePiece path, on a tiny vocabulary ------------------------------------------


def tiny_sp_meta() -> dict[str, Any]:
    """A llama-style SentencePiece vocabulary: unk/bos/eos, 256 byte tokens, a few merges, one control."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    # Every intermediate of a merge path must be a piece (score = merge priority).
    pieces = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "\u2581h", "ll", "\u2581he", "\u2581hell", "\u2581hello"]
    pieces += ["\u2581w", "or", "\u2581wor", "ld", "\u2581world", "he", "hell"]
    for rank, piece in enumerate(pieces):
        tokens.append(piece)
        types.append(NORMAL)
        scores.append(-float(rank))
    tokens.append("<|user|>")
    types.append(CONTROL)
    scores.append(0.0)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
    }


def test_it_builds_a_sentencepiece_tokenizer_from_gguf_vocab():
    meta = tiny_sp_meta()
    tok = tokenizer_from_gguf(meta)
    v = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert tok.encode("hello world") == [1, v["\u2581hello"], v["\u2581world"]]
    # A control token stays whole; text after it gets no dummy space prefix; unknown chars fall back to bytes.
    assert tok.encode("hello<|user|>hello é") == [
        1, v["\u2581hello"], v["<|user|>"], v["hell"], v["o"], v["\u2581"], v["<0xC3>"], v["<0xA9>"],
    ]
    # The same ids transformers 5.24.0 gives for this vocabulary written to a GGUF (checked once, pinned here).
    for text, ids in [
        ("hello world", [1, 271, 276]),
        ("hello<|user|>hello é", [1, 271, 279, 278, 263, 259, 198, 172]),
        (" hello", [1, 271]),
        ("hello  world", [1, 271, 259, 276]),
    ]:
        assert tok.encode(text) == ids, text
    assert tok.decode(tok.encode("hello world")[1:]) == "hello world"
    assert tok.decode([v["\u2581hello"], v["<|user|>"], v["\u2581world"]]) == "hello<|user|> world"
    assert tok.eos_token_ids == frozenset({2}) and tok.bos_token_id == 1
