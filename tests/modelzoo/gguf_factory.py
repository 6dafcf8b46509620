"""Write small random-weight Llama checkpoints as GGUF with the `gguf` package's writer (for upload tests).

The vocabulary is GPT-2 byte level (one token per byte, one merge) plus ChatML control tokens, so the real
tokenizer and chat-template paths are exercised. Holds no tests.
"""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import gguf.quants
import numpy as np

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def byte_tokens() -> list[str]:
    """The 256 printable stand-ins GPT-2's byte-level BPE uses for raw bytes, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def write_tiny_gguf(path: Path, *, seed: int = 0, dim: int = 32, n_layers: int = 2, n_heads: int = 4,
                    n_kv_heads: int = 2, hidden_dim: int = 64, context_length: int = 256,
                    chat_template: str = CHATML, poison: str | None = None, bos_token_id: int = 257,
                    eos_token_id: int = 258, weight_types: dict[str, str] | None = None) -> Path:
    """A tiny Llama GGUF (259 tokens). `poison` names a tensor to fill with NaN (a checkpoint that must be
    rejected); the other arguments may lie too (a context length past 32 bits is written as a uint64).
    `weight_types` stores tensors whose GGUF name ends with a key in that GGML type (e.g. {"ffn_up.weight": "Q4_1",
    "": "Q8_0"}: the first key that matches wins; the others are F32)."""
    tokens = byte_tokens() + ["ab", "<|im_start|>", "<|im_end|>"]
    token_types = [gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL] * 2
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_block_count(n_layers)
    if context_length < 2**32:
        writer.add_context_length(context_length)
    else:
        writer.add_uint64("llama.context_length", context_length)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(hidden_dim)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(dim // n_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(bos_token_id)
    writer.add_eos_token_id(eos_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)

    def tensor(name: str, *shape: int) -> None:
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32) if len(shape) > 1 else np.ones(shape, np.float32)
        if name == poison:
            data[...] = np.nan
        ggml_type = next((t for suffix, t in (weight_types or {}).items() if name.endswith(suffix)), "F32")
        if len(shape) > 1 and ggml_type != "F32":
            kind = gguf.GGMLQuantizationType[ggml_type]
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
            return
        writer.add_tensor(name, data)

    head_dim, vocab = dim // n_heads, len(tokens)
    tensor("token_embd.weight", vocab, dim)
    for i in range(n_layers):
        tensor(f"blk.{i}.attn_norm.weight", dim)
        tensor(f"blk.{i}.attn_q.weight", n_heads * head_dim, dim)
        tensor(f"blk.{i}.attn_k.weight", n_kv_heads * head_dim, dim)
        tensor(f"blk.{i}.attn_v.weight", n_kv_heads * head_dim, dim)
        tensor(f"blk.{i}.attn_output.weight", dim, n_heads * head_dim)
        tensor(f"blk.{i}.ffn_norm.weight", dim)
        tensor(f"blk.{i}.ffn_gate.weight", hidden_dim, dim)
        tensor(f"blk.{i}.ffn_up.weight", hidden_dim, dim)
        tensor(f"blk.{i}.ffn_down.weight", dim, hidden_dim)
    tensor("output_norm.weight", dim)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- hand-made headers, for files the gguf writer would refuse to write ---------------------------------------

def gguf_string(text: str | bytes, *, declared: int | None = None) -> bytes:
    """A GGUF string: its byte length (or a `declared` one, which may lie) and its bytes."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data) if declared is None else declared) + data


def raw_gguf(*, kv: list[bytes] = (), tensors: list[bytes] = (), tensor_count: int | None = None,
             kv_count: int | None = None, tail: bytes = b"") -> bytes:
    """A GGUF v3 file from encoded key/values and tensor infos; the counts may lie."""
    counts = struct.pack("<QQ", len(tensors) if tensor_count is None else tensor_count,
                         len(kv) if kv_count is None else kv_count)
    return b"GGUF" + struct.pack("<I", 3) + counts + b"".join(kv) + b"".join(tensors) + tail


def gguf_kv_string(key: str, value: str, *, declared: int | None = None) -> bytes:
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value, declared=declared)


def gguf_kv_array(key: str, item_type: int, count: int, payload: bytes = b"") -> bytes:
    """An array key/value declaring `count` elements of `item_type` (8 = string), followed by `payload`."""
    return gguf_string(key) + struct.pack("<IIQ", 9, item_type, count) + payload


def gguf_tensor_info(name: str, shape: tuple[int, ...], *, ggml_type: int = 0, offset: int = 0) -> bytes:
    """One tensor's entry in the header (shape GGUF-ordered, ne0 first; type 0 = F32)."""
    return gguf_string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape) \
        + struct.pack("<IQ", ggml_type, offset)
