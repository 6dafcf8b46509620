"""Bounded scans of checkpoint headers, before any library is handed the file.

A header declares counts and lengths (GGUF: tensors, keys, string lengths, array elements, tensor dims and
offsets; safetensors: the header length, each tensor's byte range). A reader that trusts them allocates or
loops by what the file says: `gguf.GGUFReader` walks a declared array element by element, so a 57-byte file
declaring 2^62 elements never finishes. Here every count is checked against what the file can hold (its size)
before anything is read by it, and the scan itself reads through a memory map without allocating by any count.
For GGUF the scan is also the reader of the metadata (gguf_format.open_gguf keeps its arrays): a vocabulary
is read in a fraction of a second, where `gguf.GGUFReader` made a numpy array of every element (seconds).

Standard library only (and the `gguf` package's constants): validation runs these scans before it imports
torch, so a hostile header is rejected in a fraction of a second. Every failure is a CheckpointError naming the
key or tensor, the value it declares and what the file holds.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
#: Bounds of what a GGUF header may declare, beyond fitting in the file. Real checkpoints stay far below:
#: a 405B model has ~1,100 tensors and ~50 keys; a 262k vocabulary with scores, types and merges ~1.3M elements.
MAX_GGUF_TENSORS = 1 << 16
MAX_GGUF_KEYS = 1 << 16
MAX_GGUF_ARRAY_ELEMENTS = 1 << 22  # in all arrays together (walked one by one)
MAX_GGUF_ARRAY_DEPTH = 2  # an array of arrays, no deeper
MAX_GGUF_KEY_BYTES = 1 << 16
MAX_TENSOR_NAME_BYTES = 256
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
#: The safetensors library's own bound on a header (100 MB).
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000

# GGUF value types: struct format of each scalar; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

#: safetensors dtypes and their bytes per element.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def quantity(n: int) -> str:
    """A declared count as a person reads it: 4611686018427387904 -> '2^62'."""
    if n >= 1 << 32 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


@dataclass(frozen=True)
class GGUFArray:
    """A GGUF array value, by its element type and length (the elements are not kept)."""

    item_type: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # as the format stores it (GGUF: ne0 first; safetensors: row-major)
    dtype: str
    begin: int  # absolute byte range in the file
    end: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Header:
    """What a checkpoint file's header declares, every count already checked against the file."""

    path: Path
    size: int  # bytes of the file
    kv: dict[str, Any] = field(default_factory=dict)  # GGUF: scalars and strings; arrays as GGUFArray or lists
    tensors: list[TensorEntry] = field(default_factory=list)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)


class _Cursor:
    """Reads little-endian (or big-endian) values at a position, refusing to read past the end of the file."""

    def __init__(self, data: Any, size: int, endian: str) -> None:
        self.data, self.size, self.endian, self.pos = data, size, endian, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise CheckpointError(f"the GGUF header is cut short: {what} needs {quantity(n)} bytes at offset "
                                  f"{self.pos}; the file holds {self.size} bytes")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(self.endian + fmt, self.data, self.pos)
        self.pos += n
        return value

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def string(self, what: str, *, limit: int | None = None, keep: bool = True) -> str:
        length = self.scalar("Q", f"the length of {what}")
        if limit is not None and length > limit:
            raise CheckpointError(f"{what} declares a length of {quantity(length)} bytes; at most {limit} are accepted")
        if length > self.size - self.pos:
            raise CheckpointError(f"{what} declares a string of {quantity(length)} bytes at offset {self.pos}; "
                                  f"the file holds {self.size} bytes")
        start = self.pos
        self.pos += length
        if not keep:
            return ""
        raw = bytes(self.data[start:self.pos])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{what} is not UTF-8 text ({raw[:40]!r})") from None


def _mapped(path: Path) -> tuple[Any, int]:
    size = path.stat().st_size
    if size == 0:
        return b"", 0
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


def scan_gguf(path: str | Path, *, keep_arrays: bool = False) -> Header:
    """Check a GGUF file's header against its size; the keys' values and the tensor table.

    Arrays are walked (strings have lengths to skip) and kept as lists with `keep_arrays`, else as GGUFArray;
    their total element count is bounded by MAX_GGUF_ARRAY_ELEMENTS, and each declared count by the bytes left
    in the file. Keeping them is how the loader reads a vocabulary: a few hundred milliseconds where the gguf
    package's reader, which makes a numpy array of every element, took seconds."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    data, size = _mapped(path)
    try:
        if size < 24 or bytes(data[:4]) != GGUF_MAGIC:
            raise CheckpointError(f"{path.name} is not a GGUF file ({size} bytes, starting {bytes(data[:4])!r})")
        endian = "<"
        (version,) = struct.unpack_from("<I", data, 4)
        if version & 0xFFFF == 0:  # written on a big-endian machine
            endian = ">"
            (version,) = struct.unpack_from(">I", data, 4)
        if version not in GGUF_VERSIONS:
            raise CheckpointError(f"GGUF version {version} is not supported (supported: 2, 3)")
        cur = _Cursor(data, size, endian)
        cur.pos = 8
        n_tensors = cur.scalar("Q", "the tensor count")
        n_kv = cur.scalar("Q", "the key count")
        left = size - cur.pos
        # A tensor entry takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes, a key 8 + 4 + 1.
        if n_tensors > MAX_GGUF_TENSORS or n_tensors * 24 > left:
            raise CheckpointError(f"the GGUF header declares {quantity(n_tensors)} tensors; the file holds {size} "
                                  f"bytes (and at most {MAX_GGUF_TENSORS} tensors are accepted)")
        if n_kv > MAX_GGUF_KEYS or n_kv * 13 > left:
            raise CheckpointError(f"the GGUF header declares {quantity(n_kv)} keys; the file holds {size} bytes "
                                  f"(and at most {MAX_GGUF_KEYS} keys are accepted)")
        header = Header(path=path, size=size)
        budget = [MAX_GGUF_ARRAY_ELEMENTS]
        for index in range(n_kv):
            key = cur.string(f"GGUF key #{index}", limit=MAX_GGUF_KEY_BYTES)
            if key in header.kv:
                raise CheckpointError(f"GGUF key {key!r} appears twice")
            value_type = cur.scalar("I", f"the type of GGUF key {key!r}")
            header.kv[key] = _value(cur, value_type, key, budget, depth=0, keep=keep_arrays)
        alignment = header.kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1) or alignment > 1 << 16:
            raise CheckpointError(f"GGUF key 'general.alignment' is {alignment!r}; it must be a power of two")
        entries: list[tuple[str, tuple[int, ...], int, int]] = []
        for index in range(n_tensors):
            name = cur.string(f"the name of tensor #{index}", limit=MAX_TENSOR_NAME_BYTES)
            n_dims = cur.scalar("I", f"the dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_TENSOR_DIMS:
                raise CheckpointError(f"tensor {name!r} declares {quantity(n_dims)} dimensions; "
                                      f"GGUF tensors have 1 to {MAX_TENSOR_DIMS}")
            dims = tuple(cur.scalar("Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
            kind = cur.scalar("I", f"the type of tensor {name!r}")
            offset = cur.scalar("Q", f"the data offset of tensor {name!r}")
            entries.append((name, dims, kind, offset))
        data_start = -(-cur.pos // alignment) * alignment
        seen: set[str] = set()
        for name, dims, kind, offset in entries:
            if name in seen:
                raise CheckpointError(f"tensor {name!r} appears twice in the GGUF header")
            seen.add(name)
            try:
                qtype = GGMLQuantizationType(kind)
                block, type_bytes = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise CheckpointError(f"tensor {name!r} has unknown type {kind}") from None
            if 0 in dims:
                raise CheckpointError(f"tensor {name!r} declares shape {dims}, which holds nothing")
            if dims[0] % block:
                raise CheckpointError(f"tensor {name!r} of type {qtype.name} declares a first dimension of "
                                      f"{quantity(dims[0])}, not a multiple of its block of {block}")
            n = 1
            for d in dims:
                n *= d
            n_bytes = n // block * type_bytes
            begin = data_start + offset
            if offset % alignment:
                raise CheckpointError(f"tensor {name!r} declares data offset {quantity(offset)}, not a multiple of "
                                      f"the file's alignment ({alignment})")
            if n_bytes > size or begin + n_bytes > size:
                shape = ", ".join(map(quantity, dims))
                raise CheckpointError(
                    f"tensor {name!r} declares {quantity(n_bytes)} bytes ({qtype.name}, shape ({shape})) "
                    f"at offset {quantity(offset)} of the data; the file holds {size} bytes"
                    + (" (is it truncated?)" if begin < size and n_bytes < 1 << 44 else "")
                )
            header.tensors.append(TensorEntry(name, dims, qtype.name, begin, begin + n_bytes))
        _check_no_overlap(header.tensors, path.name)
        return header
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _value(cur: _Cursor, value_type: int, key: str, budget: list[int], *, depth: int, keep: bool) -> Any:
    if value_type in _SCALARS:
        return cur.scalar(_SCALARS[value_type], f"the value of GGUF key {key!r}")
    if value_type == _STRING:
        return cur.string(f"the value of GGUF key {key!r}")
    if value_type != _ARRAY:
        raise CheckpointError(f"GGUF key {key!r} has unknown value type {value_type}")
    item_type = cur.scalar("I", f"the element type of GGUF key {key!r}")
    length = cur.scalar("Q", f"the element count of GGUF key {key!r}")
    if item_type not in _SCALARS and item_type not in (_STRING, _ARRAY):
        raise CheckpointError(f"GGUF key {key!r} is an array of unknown type {item_type}")
    item_bytes = struct.calcsize(_SCALARS[item_type]) if item_type in _SCALARS else 8  # a string: its length at least
    if length * item_bytes > cur.size - cur.pos:
        raise CheckpointError(f"GGUF key {key!r} declares {quantity(length)} array elements "
                              f"({_TYPE_NAMES[item_type]}); the file holds {cur.size} bytes")
    budget[0] -= length
    if budget[0] < 0:
        raise CheckpointError(f"GGUF key {key!r} declares {quantity(length)} array elements; the header may hold "
                              f"at most {MAX_GGUF_ARRAY_ELEMENTS} in all its arrays")
    items: list[Any] = []
    if item_type in _SCALARS:
        if keep:
            items = list(struct.unpack_from(f"{cur.endian}{length}{_SCALARS[item_type]}", cur.data, cur.pos))
        cur.skip(length * item_bytes, f"the elements of GGUF key {key!r}")
    elif item_type == _STRING:  # a vocabulary: ~100k strings, so the loop is kept lean
        length_of = struct.Struct(cur.endian + "Q").unpack_from
        data, size, pos = cur.data, cur.size, cur.pos
        for index in range(length):
            n = length_of(data, pos)[0] if pos + 8 <= size else size
            if pos + 8 + n > size:
                cur.pos = pos
                cur.string(f"element {index} of GGUF key {key!r}", keep=False)  # raises, saying which bound
            if keep:
                try:
                    items.append(data[pos + 8:pos + 8 + n].decode("utf-8"))
                except UnicodeDecodeError:
                    raise CheckpointError(f"element {index} of GGUF key {key!r} is not UTF-8 text "
                                          f"({data[pos + 8:pos + 8 + min(n, 40)]!r})") from None
            pos += 8 + n
        cur.pos = pos
    else:  # each element is itself an array: element type, count, elements
        if depth + 1 >= MAX_GGUF_ARRAY_DEPTH:
            raise CheckpointError(f"GGUF key {key!r} nests arrays deeper than {MAX_GGUF_ARRAY_DEPTH}")
        for _ in range(length):
            items.append(_value(cur, _ARRAY, key, budget, depth=depth + 1, keep=keep))
    return items if keep else GGUFArray(item_type, length)


def _check_no_overlap(tensors: list[TensorEntry], file: str) -> None:
    ordered = sorted(tensors, key=lambda t: t.begin)
    for before, after in zip(ordered, ordered[1:]):
        if after.begin < before.end:
            raise CheckpointError(f"tensors {before.name!r} and {after.name!r} overlap in {file} "
                                  f"(bytes {before.begin}-{before.end} and {after.begin}-{after.end})")


# --- JSON (safetensors headers, config.json, tokenizer_config.json, adapter_config.json) ------------------------

class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a key given twice is refused (json.loads would keep the last silently)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON from an uploaded file, refusing keys given twice; errors name `what`."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as error:
        raise CheckpointError(f"{what} gives the key {error.key!r} twice") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise CheckpointError(f"{what} nests too deeply to read") from None
    except ValueError as error:
        raise CheckpointError(f"{what} is not valid JSON ({error})") from None


def read_json(path: str | Path, *, limit: int) -> Any:
    """A JSON file of an uploaded folder, at most `limit` bytes, keys given once."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path.name} is {size} bytes; at most {limit} are accepted")
    return parse_json(path.read_bytes(), path.name)


def scan_safetensors(path: str | Path) -> Header:
    """Check a .safetensors file's header against its size: the header length, each tensor's dtype, shape and
    byte range (inside the data, of the size its shape takes, not overlapping), and no tensor named twice (the
    safetensors library's JSON parsing would keep the last of two silently)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path.name} is {size} bytes; a safetensors file starts with an 8-byte header length")
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > size - 8 or length > MAX_SAFETENSORS_HEADER_BYTES:
            raise CheckpointError(f"{path.name} declares a header of {quantity(length)} bytes; the file holds {size} "
                                  f"bytes (and a header may take at most {MAX_SAFETENSORS_HEADER_BYTES})")
        raw = f.read(length)
    try:
        table = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as error:
        raise CheckpointError(f"the header of {path.name} names tensor {error.key!r} twice") from None
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"the header of {path.name} is not valid JSON ({error})") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"the header of {path.name} is not a JSON object")
    data_start, data_size = 8 + length, size - 8 - length
    header = Header(path=path, size=size)
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        header.tensors.append(_safetensors_entry(name, entry, path.name, data_start, data_size))
    _check_no_overlap(header.tensors, path.name)
    return header


def _safetensors_entry(name: str, entry: Any, file: str, data_start: int, data_size: int) -> TensorEntry:
    if not isinstance(entry, dict):
        raise CheckpointError(f"tensor {name!r} of {file} has no dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"tensor {name!r} of {file} has dtype {dtype!r}, not one of {sorted(SAFETENSORS_DTYPES)}")

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(shape, list) or len(shape) > 8 or not all(whole(d) for d in shape):
        raise CheckpointError(f"tensor {name!r} of {file} has shape {shape!r}; a list of at most 8 sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(whole(o) for o in offsets):
        raise CheckpointError(f"tensor {name!r} of {file} has data_offsets {offsets!r}; two byte positions")
    begin, end = offsets
    n = 1
    for d in shape:
        n *= d
    if begin > end or end > data_size:
        raise CheckpointError(f"tensor {name!r} of {file} declares bytes {quantity(begin)} to {quantity(end)} of the "
                              f"data; the file holds {data_size} bytes of data")
    if end - begin != n * SAFETENSORS_DTYPES[dtype]:
        raise CheckpointError(f"tensor {name!r} of {file} declares shape {tuple(shape)} ({dtype}), which takes "
                              f"{quantity(n * SAFETENSORS_DTYPES[dtype])} bytes, in a range of {end - begin} bytes")
    return TensorEntry(name, tuple(shape), dtype, data_start + begin, data_start + end)

