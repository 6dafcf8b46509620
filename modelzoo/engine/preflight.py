"""The checks of a checkpoint that read only headers and metadata: run first, before torch is imported.

Validation runs these in its child process within a second or so of starting it (torch alone takes seconds
to import on a busy host): every count a header declares against the file's size (headers.py), the config's
values against the engine's bounds (config.MAXIMA) and against each other (special token ids inside the
vocabulary), the chat template rendered under its budget, and for a LoRA adapter its config and tensor names
against its base. What they return sizes the rest of the validation: the weights the headers declare.
Imports nothing heavier than the `gguf` package's constants and jinja2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import gguf_format
from .chat_template import check_template, template_source
from .config import LORA_KEY, LORA_MODULES, LoraConfig, ModelConfig, lora_shapes
from .errors import CheckpointError
from .headers import GGUFArray, read_json, scan_gguf, scan_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Sizes of the small files of a Hugging Face folder (real ones are far smaller).
MAX_CONFIG_BYTES = 1 << 20  # config.json, adapter_config.json
MAX_TOKENIZER_CONFIG_BYTES = 1 << 26  # tokenizer_config.json: added tokens of a large vocabulary, templates
MAX_TOKENIZER_JSON_BYTES = 1 << 28  # tokenizer.json (a 256k vocabulary with merges is ~35 MB)
MAX_TEMPLATE_CHARS = 1 << 20
#: Stand-ins for the special tokens' text while the template's budget is checked (the tokenizer is not built yet).
PLACEHOLDER_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


@dataclass
class Preflight:
    format: str  # "gguf" | "safetensors" (of the model; an adapter's base for "lora")
    config: ModelConfig
    n_elements: int  # weights the headers declare (with an adapter: base and adapter)
    n_bytes: int  # bytes of the files they are in
    notes: list[str] = field(default_factory=list)


def checkpoint_format(path: str | Path) -> str:
    """"gguf" or "safetensors", from the file itself (GGUF magic bytes, or a folder with config.json and
    *.safetensors), never from its name."""
    path = Path(path)
    if gguf_format.is_gguf(path):
        return "gguf"
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "safetensors"
    raise CheckpointError(f"{path.name}: neither a GGUF file nor a folder with config.json and *.safetensors")


def preflight(path: str | Path, *, base: str | Path | None = None) -> Preflight:
    """Check `path` (with `base`: the LoRA adapter folder `path` on the checkpoint `base`) from its headers."""
    if base is not None:
        checked = preflight(base)
        n_elements, n_bytes, notes = check_adapter(Path(path), checked.config)
        return Preflight(format=checked.format, config=checked.config, n_elements=checked.n_elements + n_elements,
                         n_bytes=checked.n_bytes + n_bytes, notes=checked.notes + notes)
    path = Path(path)
    if checkpoint_format(path) == "gguf":
        return _gguf(path)
    return _safetensors(path)


def _gguf(path: Path) -> Preflight:
    header = scan_gguf(path)
    meta = header.kv
    names = {t.name for t in header.tensors}
    config = ModelConfig(**gguf_format.config_kwargs(meta), tie_embeddings="output.weight" not in names,
                         qkv_bias="blk.0.attn_q.bias" in names)
    tokens = meta.get("tokenizer.ggml.tokens")
    config.check_token_ids(gguf_format.special_token_ids(meta),
                           vocabulary=len(tokens) if isinstance(tokens, GGUFArray) else None)
    _check_template(meta.get("tokenizer.chat_template"), "GGUF key 'tokenizer.chat_template'")
    return Preflight(format="gguf", config=config, n_elements=header.n_elements, n_bytes=header.size)


def _safetensors(directory: Path) -> Preflight:
    hf = read_json(directory / "config.json", limit=MAX_CONFIG_BYTES)
    config = ModelConfig.from_hf_config(hf)
    config.check_token_ids({f"config.json {k!r}": hf[k] for k in ("bos_token_id", "eos_token_id") if k in hf})
    n_elements = n_bytes = 0
    for file in sorted(directory.glob("*.safetensors")):
        header = scan_safetensors(file)
        n_elements, n_bytes = n_elements + header.n_elements, n_bytes + header.size
    if (tokenizer := directory / "tokenizer.json").is_file() and tokenizer.stat().st_size > MAX_TOKENIZER_JSON_BYTES:
        raise CheckpointError(f"tokenizer.json is {tokenizer.stat().st_size} bytes; at most "
                              f"{MAX_TOKENIZER_JSON_BYTES} are accepted")
    tokenizer_config: Any = {}
    if (directory / "tokenizer_config.json").is_file():
        tokenizer_config = read_json(directory / "tokenizer_config.json", limit=MAX_TOKENIZER_CONFIG_BYTES)
        if not isinstance(tokenizer_config, dict):
            raise CheckpointError("tokenizer_config.json is not a JSON object")
    if (jinja := directory / "chat_template.jinja").is_file():
        if jinja.stat().st_size > 4 * MAX_TEMPLATE_CHARS:
            raise CheckpointError(f"chat_template.jinja is {jinja.stat().st_size} bytes; at most "
                                  f"{4 * MAX_TEMPLATE_CHARS} are accepted")
        try:
            source: Any = jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("chat_template.jinja is not UTF-8 text") from None
        _check_template(source, "chat_template.jinja")
    else:
        _check_template(tokenizer_config.get("chat_template"), "tokenizer_config.json 'chat_template'")
    return Preflight(format="safetensors", config=config, n_elements=n_elements, n_bytes=n_bytes)


def _check_template(value: Any, key: str) -> None:
    source = template_source(value, key=key)
    if source is not None and len(source) > MAX_TEMPLATE_CHARS:
        raise CheckpointError(f"{key} is {len(source)} characters long; at most {MAX_TEMPLATE_CHARS} are accepted")
    check_template(source, special_tokens=PLACEHOLDER_TOKENS)


def check_adapter(directory: Path, base: ModelConfig) -> tuple[int, int, list[str]]:
    """A PEFT LoRA folder against the config of its base: adapter_config.json (LoraConfig), and every tensor of
    adapter_model.safetensors a factor of a layer the base has, of a module target_modules names, in the shape
    that module and the rank give. Returns the weights and bytes it declares, and notes for the admin."""
    lora = LoraConfig.from_peft_config(read_json(directory / ADAPTER_CONFIG, limit=MAX_CONFIG_BYTES))
    header = scan_safetensors(directory / ADAPTER_WEIGHTS)
    if not header.tensors:
        raise CheckpointError(f"{ADAPTER_WEIGHTS} holds no tensors")
    for tensor in header.tensors:
        match = LORA_KEY.fullmatch(tensor.name)
        if match is None:
            raise CheckpointError(f"unexpected tensor {tensor.name!r} in the adapter")
        layer, group, module, which = int(match.group(1)), match.group(2), match.group(3), match.group(4)
        if LORA_MODULES.get(module) != group:
            raise CheckpointError(f"adapter tensor {tensor.name!r} names {group}.{module}, which a Llama-family "
                                  f"base does not have (it has {', '.join(LORA_MODULES)})")
        if module not in lora.target_modules:
            raise CheckpointError(f"adapter tensor {tensor.name!r} changes {module}, which adapter_config.json "
                                  f"'target_modules' ({', '.join(lora.target_modules)}) does not name")
        if layer >= base.n_layers:
            raise CheckpointError(f"adapter tensor {tensor.name!r} is for layer {layer}; the base has "
                                  f"{base.n_layers} layers")
        out_features, in_features = lora_shapes(base, module)
        expected = (lora.rank, in_features) if which == "A" else (out_features, lora.rank)
        if tensor.shape != expected:
            raise CheckpointError(f"adapter tensor {tensor.name!r} has shape {tensor.shape}; at rank {lora.rank} "
                                  f"(adapter_config.json 'r') the base's {module} needs {expected}: the factors "
                                  "do not fit this base")
    notes = []
    if lora.base_name:
        notes.append(f"adapter_config.json base_model_name_or_path {lora.base_name[:200]!r} is not fetched: "
                     "the adapter is merged into the zoo checkpoint chosen as its base")
    return header.n_elements, header.size, notes
