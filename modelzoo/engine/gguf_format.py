"""GGUF adapter: metadata (config, tokenizer, chat template) and tensors (state dict).

The header (metadata and tensor table) is read by headers.scan_gguf, which checks every
count against the file's size; tensor data is read from a memory map and dequantized by
the `gguf` package's dequantizers. Reading metadata touches no tensor data. numpy and
torch are imported where tensors are read: the metadata functions run in validation
before torch is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import number
from .errors import CheckpointError
from .headers import Header, scan_gguf

if TYPE_CHECKING:
    import torch

GGUF_MAGIC = b"GGUF"

log = logging.getLogger(__name__)


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's checked header: its metadata (arrays included) and tensor table."""

    path: Path
    header: Header


def open_gguf(path: str | Path) -> GGUFFile:
    return GGUFFile(Path(path), scan_gguf(path, keep_arrays=True))


def read_metadata(file: GGUFFile) -> dict[str, Any]:
    """All key/value fields as plain Python values (str, int, float, bool, lists)."""
    return dict(file.header.kv)


def architecture(meta: dict[str, Any]) -> str:
    if "general.architecture" not in meta:
        raise CheckpointError("GGUF metadata has no general.architecture")
    return str(meta["general.architecture"])


def config_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig keyword arguments from llama.cpp metadata keys (llama, qwen2, mistral...).

    Missing or non-numeric keys raise CheckpointError naming the key; ModelConfig checks the values."""
    arch = architecture(meta)

    def key(name: str, field: str | None, default: Any = None, kind: type = int) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"GGUF metadata has no {arch}.{name}")
        return number(value, key=f"GGUF key '{arch}.{name}'", field=field, kind=kind)

    n_heads = key("attention.head_count", "n_heads")
    return dict(
        arch=arch,
        vocab_size=key("vocab_size", "vocab_size", len(meta.get("tokenizer.ggml.tokens") or ())),
        dim=key("embedding_length", "dim"),
        n_layers=key("block_count", "n_layers"),
        n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", "n_kv_heads", n_heads),
        hidden_dim=key("feed_forward_length", "hidden_dim"),
        max_seq_len=key("context_length", "max_seq_len", 2048),
        rope_theta=key("rope.freq_base", None, 10000.0, float),
        norm_eps=key("attention.layer_norm_rms_epsilon", None, 1e-5, float),
        head_dim=key("attention.key_length", "head_dim", 0),  # 0: embedding_length // head_count, once checked
    )


#: The special token ids the tokenizer and the chat template use; each must be a token of the vocabulary.
SPECIAL_TOKEN_KEYS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                      "tokenizer.ggml.unknown_token_id")


def special_token_ids(meta: dict[str, Any]) -> dict[str, Any]:
    """GGUF key -> the id it gives, for the special tokens present (for ModelConfig.check_token_ids)."""
    return {f"GGUF key {k!r}": meta[k] for k in SPECIAL_TOKEN_KEYS if k in meta}


def quantization_name(file: GGUFFile) -> str:
    """The dominant quantization of the 2-D weights (e.g. "Q4_1"), from the tensor table."""
    counts: dict[str, int] = {}
    for t in file.header.tensors:
        if len(t.shape) >= 2:
            counts[t.dtype] = counts.get(t.dtype, 0) + t.n_elements
    return max(counts, key=counts.__getitem__) if counts else "F32"


def parameter_count(file: GGUFFile) -> int:
    return file.header.n_elements


# --- tensors -----------------------------------------------------------------

_LAYER_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_q.bias": "attention.wq.bias",
    "attn_k.bias": "attention.wk.bias",
    "attn_v.bias": "attention.wv.bias",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}


_GGUF_LAYER_NAMES = {ours: theirs for theirs, ours in _LAYER_NAMES.items()}
_GGUF_TOP_NAMES = {ours: theirs for theirs, ours in _TOP_NAMES.items()}


def _our_name(gguf_name: str) -> str:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    raise CheckpointError(f"unexpected tensor {gguf_name!r}: not a tensor of a Llama-family decoder")


def file_name(ours: str) -> str:
    """The GGUF name of one of our (unfused) tensor names, for messages: 'layers.0.attention.wq.weight' ->
    'blk.0.attn_q.weight'."""
    if ours in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[ours]
    _, index, rest = ours.split(".", 2)
    return f"blk.{index}.{_GGUF_LAYER_NAMES.get(rest, rest)}"


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's convert_hf_to_gguf permute of attn_q/attn_k rows.

    The converter reorders each head's rows from HF's half-split layout
    [x0..x_{d/2-1}, x_{d/2}..] to interleaved pairs for GGML's rope; inverting it
    lets one rotary (HF rotate_half) serve GGUF and safetensors alike.
    """
    # w: (n_heads * head_dim, ...) -> (n_heads, head_dim/2, 2, ...) -> (n_heads, 2, head_dim/2, ...)
    rest = w.shape[1:]
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


# llama.cpp permutes q/k only for archs whose GGML rope is the interleaved ("norm") kind;
# qwen2 and friends use NEOX rope, which is already HF's rotate_half layout.
PERMUTED_ROPE_ARCHS = frozenset({"llama", "mistral", "granite"})
_ROTARY_SUFFIXES = ("attention.wq.weight", "attention.wq.bias", "attention.wk.weight", "attention.wk.bias")


def iter_tensors(file: GGUFFile, *, arch: str, n_heads: int, n_kv_heads: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, float32 tensor) one at a time in file order, dequantized and q/k un-permuted.

    One at a time so a loader can fuse and quantize layer by layer without holding
    every float32 weight at once. Shapes are checked against the config by the loader
    (loading.assemble), which names the GGUF tensor; a q/k tensor whose rows do not even
    split into heads is passed on as it is, for that check to reject.
    """
    import numpy as np
    import torch
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    unpermute = arch in PERMUTED_ROPE_ARCHS
    data = np.memmap(file.path, dtype=np.uint8, mode="r").view(np.ndarray)  # a plain array: slices stay cheap
    for t in file.header.tensors:
        name = _our_name(t.name)
        declared = tuple(reversed(t.shape))  # numpy's order (GGUF lists ne0, the fastest, first)
        rows = data[t.begin:t.end].reshape(*declared[:-1], -1)  # each row's blocks as bytes
        array = dequantize(rows, GGMLQuantizationType[t.dtype])
        # F32 tensors come back as read-only views of the memory map: copy those.
        tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=not array.flags.writeable))
        del rows, array
        if tuple(tensor.shape) != declared:
            raise CheckpointError(
                f"tensor {t.name!r} holds data of shape {tuple(tensor.shape)}; its header declares {declared}"
            )
        if unpermute and name.endswith(_ROTARY_SUFFIXES):
            heads = n_heads if ".wq." in name else n_kv_heads
            if tensor.shape[0] % (2 * heads) == 0:
                tensor = unpermute_rotary(tensor, heads)
        yield name, tensor


def read_blocks(file: GGUFFile, types: Iterable[str], *, arch: str, n_heads: int, n_kv_heads: int
                ) -> dict[str, tuple[str, torch.Tensor]]:
    """Our (unfused) name -> (GGML type, (rows, bytes a row) uint8 copy of the stored blocks) for every 2-D
    tensor stored in one of `types`, q/k rows un-permuted like iter_tensors' (block_linear.py computes from
    them). Shapes were checked when the tensors were read as floats."""
    import numpy as np
    import torch

    unpermute = arch in PERMUTED_ROPE_ARCHS
    types = frozenset(types)
    data = np.memmap(file.path, dtype=np.uint8, mode="r").view(np.ndarray)
    blocks: dict[str, tuple[str, torch.Tensor]] = {}
    for t in file.header.tensors:
        if t.dtype not in types or len(t.shape) != 2:
            continue
        name = _our_name(t.name)
        rows = torch.from_numpy(data[t.begin:t.end].reshape(t.shape[1], -1).copy())
        if unpermute and name.endswith(_ROTARY_SUFFIXES):
            rows = unpermute_rotary(rows, n_heads if ".wq." in name else n_kv_heads).contiguous()
        blocks[name] = (t.dtype, rows)
    return blocks


def read_state_dict(file: GGUFFile, *, arch: str, n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32, renamed to our module names, q/k un-permuted."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in iter_tensors(file, arch=arch, n_heads=n_heads, n_kv_heads=n_kv_heads):
        if name in state:
            raise CheckpointError(f"duplicate tensor name {file_name(name)!r}")
        state[name] = tensor
    return state
