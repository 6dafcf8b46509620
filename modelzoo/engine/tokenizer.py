"""Tokenizers behind one small interface: encode, decode, special ids.

Two builders from GGUF metadata, chosen by `tokenizer.ggml.model`:
- "gpt2": byte-level BPE through `tokenizers`, built the way Hugging Face
  transformers builds it from the same file, so token ids match it exactly;
- "llama": SentencePiece BPE through `sentencepiece`, from a ModelProto we
  serialize from the GGUF vocabulary and scores.
A Hugging Face directory loads its tokenizer.json through `tokenizers` directly, or, without one, its
SentencePiece tokenizer.model through `sentencepiece` with the file's own normalizer.
CONTROL tokens (<|im_start|>, <s>, ...) always encode as single ids.
"""

from __future__ import annotations

import json
import re
import struct
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import CheckpointError

# GGUF token types (same numbering as SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class Tokenizer(ABC):
    eos_token_ids: frozenset[int]
    bos_token_id: int | None
    add_bos: bool

    @abstractmethod
    def _encode(self, text: str, *, special: bool) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`, with the BOS id first when the checkpoint asks for it. With `special=False`
        the text of a special token (`<|im_end|>`) is encoded as plain text, never as its control id: for what
        users write, so they cannot forge a turn or end the prompt."""
        return self._with_bos(self._encode(text, special=special))

    def encode_parts(self, parts: list[tuple[str, bool]]) -> list[int]:
        """One text given in parts, each (text, special): the template's own text may hold control tokens, users'
        text may not. Each part is encoded on its own (BOS once, first)."""
        return self._with_bos([i for text, special in parts if text for i in self._encode(text, special=special)])

    @abstractmethod
    def mentions_special(self, text: str) -> bool:
        """Whether `text` holds the text of a special token (which encode would turn into its id)."""

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids


class TokenizersTokenizer(Tokenizer):
    """Any `tokenizers.Tokenizer` (byte-level BPE from GGUF, or a tokenizer.json)."""

    def __init__(
        self, backend: HFTokenizer, *, eos_token_ids: frozenset[int], bos_token_id: int | None, add_bos: bool = False
    ) -> None:
        self.backend = backend
        # A copy that reads special tokens' text as plain text (tokenizers' encode_special_tokens is a property
        # of the whole object, so one object per mode keeps encoding thread-safe).
        self.plain_backend = HFTokenizer.from_str(backend.to_str())
        self.plain_backend.encode_special_tokens = True
        self.eos_token_ids = eos_token_ids
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos

    def _encode(self, text: str, *, special: bool) -> list[int]:
        return (self.backend if special else self.plain_backend).encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def mentions_special(self, text: str) -> bool:
        added = self.backend.get_added_tokens_decoder()
        return any(i in added for i in self.backend.encode(text, add_special_tokens=False).ids)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE; special (CONTROL) tokens are split out of the text first."""

    def __init__(
        self,
        processor: Any,
        *,
        special: dict[str, int],
        add_space_prefix: bool,
        eos_token_ids: frozenset[int],
        bos_token_id: int | None,
        add_bos: bool,
    ) -> None:
        self.sp = processor
        self.special = special
        self.add_space_prefix = add_space_prefix
        self.eos_token_ids = eos_token_ids
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos
        self.id_to_special = {i: s for s, i in special.items()}
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(special, key=len, reverse=True))) + ")") if special else None

    def _encode(self, text: str, *, special: bool) -> list[int]:
        chunks = self._split.split(text) if self._split and special else [text]
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if chunk in self.special and i % 2 == 1:
                ids.append(self.special[chunk])
            elif chunk:
                # Like HF's Metaspace(prepend_scheme="first"): a dummy space only at the start of the
                # text, and only when it does not start with a space already.
                if i == 0 and self.add_space_prefix and not chunk.startswith(" "):
                    chunk = " " + chunk
                ids.extend(self.sp.encode(chunk))
        return ids

    def mentions_special(self, text: str) -> bool:
        return bool(self._split and self._split.search(text))

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        pieces = self.sp.get_piece_size()
        for i in list(ids) + [-1]:
            if i in self.id_to_special or i == -1:
                if run:
                    # A proto without dummy prefix keeps every space; one with it (a tokenizer.model) drops the
                    # prefix space of each run, which its encode added.
                    out.append(self.sp.decode(run))
                    run = []
                if i != -1:
                    out.append(self.id_to_special[i])
            elif 0 <= i < pieces:  # ids of a padded embedding past the vocabulary decode as nothing
                run.append(i)
        text = "".join(out)
        # Like HF's decoder (Strip left=1): the dummy prefix space of the first piece goes.
        if self.add_space_prefix and text.startswith(" ") and ids and ids[0] not in self.id_to_special:
            text = text[1:]
        return text

    @property
    def vocab_size(self) -> int:
        return max(self.sp.get_piece_size(), max(self.id_to_special, default=-1) + 1)


# --- GGUF builders -------------------------------------------------------------

# Pre-tokenizer splits for the `tokenizer.ggml.pre` values we know; anything else
# (e.g. SmolLM's "smollm") gets GPT-2's ByteLevel regex, as transformers does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _special_ids(meta: dict[str, Any]) -> tuple[frozenset[int], int | None, bool]:
    eos = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta}
    bos = meta.get("tokenizer.ggml.bos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama"))
    return frozenset(eos), (int(bos) if bos is not None else None), add_bos


def byte_level_from_gguf(meta: dict[str, Any]) -> TokenizersTokenizer:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # A token outside the byte alphabet (rare llama.cpp spelling) is respelled byte-wise.
    vocab = {
        (t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    backend = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    backend.decoder = decoders.ByteLevel()
    control = [
        AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == CONTROL and set(t) <= alphabet
    ]
    backend.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED]
    if user:
        backend.add_tokens(user)
    eos, bos, add_bos = _special_ids(meta)
    return TokenizersTokenizer(backend, eos_token_ids=eos, bos_token_id=bos, add_bos=add_bos)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value: bytes | int | float | str) -> bytes:
    """One protobuf field: varint (int/bool), fixed32 (float) or length-delimited (bytes/str)."""
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def sentencepiece_model_proto(
    tokens: list[str], scores: list[float], types: list[int], *, unk_id: int, bos_id: int | None, eos_id: int | None
) -> bytes:
    """Serialize a SentencePiece ModelProto (BPE, byte fallback, no normalization).

    Field numbers follow sentencepiece_model.proto; written by hand so no protobuf dependency is needed.
    """
    pieces = b"".join(_field(1, _field(1, t) + _field(2, float(s)) + _field(3, int(ty))) for t, s, ty in zip(tokens, scores, types))
    trainer = (
        _field(3, 2)  # model_type = BPE
        + _field(4, len(tokens))  # vocab_size
        + _field(35, int(BYTE in types))  # byte_fallback
        + _field(40, unk_id)
        + _field(41, bos_id if bos_id is not None else 0xFFFFFFFFFFFFFFFF)  # -1 as int32 varint
        + _field(42, eos_id if eos_id is not None else 0xFFFFFFFFFFFFFFFF)
        + _field(43, 0xFFFFFFFFFFFFFFFF)  # pad_id = -1
    )
    normalizer = _field(1, "identity") + _field(3, 0) + _field(4, 0) + _field(5, 1)
    return pieces + _field(2, trainer) + _field(3, normalizer)


def sentencepiece_from_gguf(meta: dict[str, Any]) -> SentencePieceTokenizer:
    import sentencepiece as spm

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    scores: list[float] = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    eos, bos, add_bos = _special_ids(meta)
    unk = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    proto = sentencepiece_model_proto(
        tokens, scores, types, unk_id=unk, bos_id=bos, eos_id=int(meta["tokenizer.ggml.eos_token_id"]) if "tokenizer.ggml.eos_token_id" in meta else None
    )
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto)
    special = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)}
    return SentencePieceTokenizer(
        processor,
        special=special,
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        eos_token_ids=eos,
        bos_token_id=bos,
        add_bos=add_bos,
    )


def tokenizer_from_gguf(meta: dict[str, Any]) -> Tokenizer:
    kind = meta.get("tokenizer.ggml.model")
    if kind in ("gpt2", "llama") and not meta.get("tokenizer.ggml.tokens"):
        raise CheckpointError("GGUF metadata has no tokenizer.ggml.tokens")
    if kind == "gpt2" and "tokenizer.ggml.merges" not in meta:
        raise CheckpointError("GGUF metadata has no tokenizer.ggml.merges for its gpt2 tokenizer")
    if kind == "gpt2":
        return byte_level_from_gguf(meta)
    if kind == "llama":
        return sentencepiece_from_gguf(meta)
    raise CheckpointError(f"unsupported GGUF tokenizer model {kind!r} (supported: gpt2, llama)")


# --- Hugging Face directory builders ---------------------------------------------

#: Real tokenizer.model files are a few MiB (a 256k vocabulary is ~4 MiB); anything far larger is refused.
MAX_SENTENCEPIECE_BYTES = 64 * 1024**2


def _token_content(value: Any) -> str | None:
    """A token as tokenizer_config.json writes it: a string or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def tokenizer_from_hf_dir(directory: Path, *, eos_token_ids: frozenset[int], bos_token_id: int | None) -> Tokenizer:
    """A Hugging Face checkpoint directory: tokenizer.json, else a SentencePiece tokenizer.model
    (+ tokenizer_config.json for special tokens and add_bos_token)."""
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if not isinstance(cfg, dict):
        raise CheckpointError("tokenizer_config.json is not a JSON object")
    if (directory / "tokenizer.json").is_file():
        return _tokenizers_from_hf_dir(directory, cfg, eos_token_ids=eos_token_ids, bos_token_id=bos_token_id)
    if (directory / "tokenizer.model").is_file():
        return sentencepiece_from_model_file(
            directory / "tokenizer.model", cfg, eos_token_ids=eos_token_ids, bos_token_id=bos_token_id
        )
    raise CheckpointError("no tokenizer: the folder needs tokenizer.json or a SentencePiece tokenizer.model")


def _tokenizers_from_hf_dir(
    directory: Path, cfg: dict[str, Any], *, eos_token_ids: frozenset[int], bos_token_id: int | None
) -> TokenizersTokenizer:
    backend = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    eos = set(eos_token_ids)
    eos_tok = _token_content(cfg.get("eos_token"))
    if eos_tok is not None and backend.token_to_id(eos_tok) is not None:
        eos.add(backend.token_to_id(eos_tok))
    return TokenizersTokenizer(
        backend, eos_token_ids=frozenset(eos), bos_token_id=bos_token_id, add_bos=bool(cfg.get("add_bos_token", False))
    )


def _load_sentencepiece(path: Path) -> Any:
    import sentencepiece as spm

    size = path.stat().st_size
    if size > MAX_SENTENCEPIECE_BYTES:
        raise CheckpointError(f"tokenizer.model is {size} bytes; a SentencePiece model is at most {MAX_SENTENCEPIECE_BYTES}")
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError) as error:
        detail = str(error).strip().removeprefix("INTERNAL:").strip()
        if "ParseFromArray" in detail:
            detail = "it does not parse as a ModelProto"
        raise CheckpointError(f"tokenizer.model is not a valid SentencePiece model ({detail})") from error
    if processor.get_piece_size() == 0:
        raise CheckpointError("tokenizer.model holds no pieces")
    return processor


def sentencepiece_from_model_file(
    path: Path, cfg: dict[str, Any], *, eos_token_ids: frozenset[int], bos_token_id: int | None
) -> SentencePieceTokenizer:
    """A SentencePiece tokenizer.model with tokenizer_config.json `cfg`.

    Text between special tokens is encoded by sentencepiece with the file's own normalizer spec (dummy prefix,
    byte fallback), as Meta's Llama code and HF's legacy LlamaTokenizer do. Special tokens are the model's
    CONTROL and UNKNOWN pieces plus the config's added_tokens_decoder (which may extend the vocabulary).
    bos/eos come from config.json, else tokenizer_config.json, else the model's trainer spec;
    add_bos_token defaults to True, as in HF's LlamaTokenizer.
    """
    processor = _load_sentencepiece(path)
    special: dict[str, int] = {}
    for i in range(processor.get_piece_size()):
        if processor.is_control(i) or processor.is_unknown(i):
            piece = processor.id_to_piece(i)
            if piece:
                special[piece] = i
    added = cfg.get("added_tokens_decoder") or {}
    for key, token in (added.items() if isinstance(added, dict) else []):
        content = _token_content(token)
        if content is not None and str(key).isdigit():
            special[content] = int(key)

    def token_id(text: str | None) -> int | None:
        if text is None:
            return None
        if text in special:
            return special[text]
        i = processor.piece_to_id(text)
        return i if processor.id_to_piece(i) == text else None

    eos = set(eos_token_ids)
    if (eos_tok := token_id(_token_content(cfg.get("eos_token")))) is not None:
        eos.add(eos_tok)
    if not eos and processor.eos_id() >= 0:
        eos.add(processor.eos_id())
    if bos_token_id is None:
        bos_token_id = token_id(_token_content(cfg.get("bos_token")))
    if bos_token_id is None and processor.bos_id() >= 0:
        bos_token_id = processor.bos_id()
    return SentencePieceTokenizer(
        processor,
        special=special,
        add_space_prefix=False,  # the model's normalizer adds its own dummy prefix
        eos_token_ids=frozenset(eos),
        bos_token_id=bos_token_id,
        add_bos=bool(cfg.get("add_bos_token", True)),
    )
