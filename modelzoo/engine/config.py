"""ModelConfig: one dataclass fixes every shape of the Llama-family decoder."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from .errors import CheckpointError
from .headers import quantity

#: The largest value of each shape this engine serves; a checkpoint declaring more is refused, its key named.
#: They bound what a config drives before the weights are compared with it (the layers built, the KV caches),
#: and max_seq_len bounds Checkpoint.context_length (a 32-bit database column) with room to spare.
MAXIMA: dict[str, int] = {
    "vocab_size": 1 << 22, "dim": 1 << 16, "n_layers": 1 << 10, "n_heads": 1 << 10, "n_kv_heads": 1 << 10,
    "hidden_dim": 1 << 18, "max_seq_len": 1 << 24, "head_dim": 1 << 12,
}
_UNITS = {"max_seq_len": " positions", "vocab_size": " tokens", "n_layers": " layers"}


def number(value: Any, *, key: str, field: str | None = None, kind: type = int) -> Any:
    """`value`, which the file gives under `key`, as an int (or float); for a ModelConfig `field`, within MAXIMA.
    A CheckpointError names the key and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CheckpointError(f"{key} is {value!r}, not a number")
    try:
        result = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise CheckpointError(f"{key} is {value!r}, not a number") from None
    if kind is int and isinstance(value, float) and value != result:
        raise CheckpointError(f"{key} is {value!r}, not a whole number")
    if kind is float and not math.isfinite(result):
        raise CheckpointError(f"{key} is {value!r}, not a finite number")
    if field in MAXIMA and result > MAXIMA[field]:
        raise CheckpointError(f"{key} is {quantity(result)}; this engine serves at most "
                              f"{quantity(MAXIMA[field])}{_UNITS.get(field, '')}")
    return result


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 0  # 0 -> n_heads (plain multi-head attention)
    hidden_dim: int = 0  # 0 -> SwiGLU default from dim
    max_seq_len: int = 2048  # the checkpoint's context length
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2-style biases on q/k/v projections
    head_dim: int = 0  # 0 -> dim // n_heads
    arch: str = "llama"

    def __post_init__(self) -> None:
        # Checked, not asserted: these values come from a checkpoint's metadata.
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_kv_heads", "hidden_dim", "head_dim"):  # 0 means "derive it"
            if getattr(self, name) < 0:
                raise CheckpointError(f"{name} must be positive, got {getattr(self, name)}")
        for name, maximum in MAXIMA.items():
            if getattr(self, name) > maximum:
                raise CheckpointError(f"{name} is {quantity(getattr(self, name))}; this engine serves at most "
                                      f"{quantity(maximum)}{_UNITS.get(name, '')}")
        if not self.rope_theta > 0 or not math.isfinite(self.rope_theta):
            raise CheckpointError(f"rope_theta must be positive, got {self.rope_theta}")
        if not self.norm_eps >= 0 or not math.isfinite(self.norm_eps):
            raise CheckpointError(f"norm_eps must not be negative, got {self.norm_eps}")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim == 0:
            hidden = int(2 * (4 * self.dim) / 3)
            self.hidden_dim = 256 * ((hidden + 255) // 256)
        if self.n_heads % self.n_kv_heads != 0:
            raise CheckpointError(
                f"n_heads ({self.n_heads}) is not a multiple of n_kv_heads ({self.n_kv_heads}): "
                "grouped-query attention shares each key/value head among a whole number of query heads"
            )
        if self.head_dim == 0 or self.head_dim % 2 != 0:
            raise CheckpointError(f"head_dim is {self.head_dim}; rotary embeddings need a positive even head_dim")

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a Hugging Face config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)."""
        if not isinstance(cfg, dict):
            raise CheckpointError("config.json is not a JSON object")
        model_type = str(cfg.get("model_type", "llama"))

        def value(key: str, field: str | None, default: Any = None, kind: type = int) -> Any:
            if cfg.get(key, default) is None:
                raise CheckpointError(f"config.json has no {key!r}")
            return number(cfg.get(key, default), key=f"config.json {key!r}", field=field, kind=kind)

        n_heads = value("num_attention_heads", "n_heads")
        return cls(
            arch=model_type,
            vocab_size=value("vocab_size", "vocab_size"),
            dim=value("hidden_size", "dim"),
            n_layers=value("num_hidden_layers", "n_layers"),
            n_heads=n_heads,
            n_kv_heads=value("num_key_value_heads", "n_kv_heads") if cfg.get("num_key_value_heads") else n_heads,
            hidden_dim=value("intermediate_size", "hidden_dim"),
            max_seq_len=value("max_position_embeddings", "max_seq_len", 2048),
            rope_theta=value("rope_theta", None, 10000.0, float),
            norm_eps=value("rms_norm_eps", None, 1e-5, float),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            head_dim=value("head_dim", "head_dim") if cfg.get("head_dim") else 0,  # 0: hidden_size // n_heads
        )

    def check_token_ids(self, ids: dict[str, Any], *, vocabulary: int | None = None) -> None:
        """Each special token id the file gives (key -> id) must be a token of the model: a whole number below
        vocab_size and, when the tokenizer's size is known, below it too."""
        size = min(self.vocab_size, vocabulary if vocabulary is not None else self.vocab_size)
        for key, token in ids.items():
            for one in token if isinstance(token, list) else [token]:
                if one is None:
                    continue
                if isinstance(one, bool) or not isinstance(one, int) or not 0 <= one < size:
                    raise CheckpointError(f"{key} is {one!r}, outside the {size}-token vocabulary")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Named presets as plain data (tests and benchmarks build from these).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=128),
    "smollm2-135m": dict(
        vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536, max_seq_len=8192,
        rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
    ),
}


# --- LoRA adapters (PEFT's adapter_config.json) ------------------------------------------------------------------

#: The projections of a Llama-family layer a LoRA adapter may target, and the sub-module each lives in.
LORA_MODULES: dict[str, str] = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}
#: The name PEFT gives each low-rank factor, e.g. base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight.
LORA_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d{1,6})\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
MAX_LORA_RANK = 1 << 12


def lora_shapes(cfg: ModelConfig, module: str) -> tuple[int, int]:
    """(out_features, in_features) of a Llama projection, which a LoRA pair on it must fit: B (out, r), A (r, in)."""
    D, F = cfg.dim, cfg.hidden_dim
    return {"q_proj": (cfg.q_size, D), "k_proj": (cfg.kv_size, D), "v_proj": (cfg.kv_size, D),
            "o_proj": (D, cfg.q_size), "gate_proj": (F, D), "up_proj": (F, D), "down_proj": (D, F)}[module]


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class LoraConfig:
    """An adapter's adapter_config.json, checked. Its base is always a checkpoint of the zoo, chosen at upload:
    base_model_name_or_path is never fetched. A hub name or path there is only noted; a URL is refused."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_name: str = ""

    @classmethod
    def from_peft_config(cls, cfg: Any) -> LoraConfig:
        if not isinstance(cfg, dict):
            raise CheckpointError("adapter_config.json is not a JSON object")
        if cfg.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"adapter_config.json peft_type is {cfg.get('peft_type')!r}, not 'LORA'")
        for key in ("r", "lora_alpha"):
            if key not in cfg:
                raise CheckpointError(f"adapter_config.json has no {key!r}")
        rank = number(cfg["r"], key="adapter_config.json 'r'")
        alpha = number(cfg["lora_alpha"], key="adapter_config.json 'lora_alpha'", kind=float)
        if not 0 < rank <= MAX_LORA_RANK:
            raise CheckpointError(f"adapter_config.json 'r' is {quantity(rank)}; it must be 1 to {MAX_LORA_RANK}")
        targets = cfg.get("target_modules")
        if targets is None:
            raise CheckpointError("adapter_config.json has no 'target_modules': it must name the modules the adapter "
                                  f"changes (of {', '.join(LORA_MODULES)})")
        if targets == "all-linear":
            targets = list(LORA_MODULES)
        if isinstance(targets, str):
            raise CheckpointError(f"adapter_config.json 'target_modules' is the pattern {targets[:100]!r}; list the "
                                  f"module names instead (of {', '.join(LORA_MODULES)})")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise CheckpointError(f"adapter_config.json 'target_modules' is {str(targets)[:100]}; a list of module "
                                  f"names (of {', '.join(LORA_MODULES)})")
        for target in targets:
            if target.rsplit(".", 1)[-1] not in LORA_MODULES:
                raise CheckpointError(f"adapter_config.json 'target_modules' names {target[:100]!r}, which a "
                                      f"Llama-family base does not have (it has {', '.join(LORA_MODULES)})")
        base = cfg.get("base_model_name_or_path") or ""
        if not isinstance(base, str):
            raise CheckpointError(f"adapter_config.json 'base_model_name_or_path' is {str(base)[:100]}, not a name")
        if _URL.match(base):
            raise CheckpointError(f"adapter_config.json 'base_model_name_or_path' is the URL {base[:200]!r}; nothing "
                                  "is fetched: an adapter runs on the zoo checkpoint chosen as its base (give a name "
                                  "or leave it out)")
        return cls(rank=rank, alpha=alpha, target_modules=tuple(dict.fromkeys(t.rsplit(".", 1)[-1] for t in targets)),
                   base_name=base)
