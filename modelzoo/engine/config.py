"""ModelConfig: one dataclass fixes every shape of the Llama-family decoder."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .errors import CheckpointError


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
        if not self.rope_theta > 0:
            raise CheckpointError(f"rope_theta must be positive, got {self.rope_theta}")
        if not self.norm_eps >= 0:
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

        def number(key: str, default: Any = None, kind: type = int) -> Any:
            value = cfg.get(key, default)
            if value is None:
                raise CheckpointError(f"config.json has no {key!r}")
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise CheckpointError(f"config.json {key!r} is {value!r}, not a number") from None

        n_heads = number("num_attention_heads")
        return cls(
            arch=model_type,
            vocab_size=number("vocab_size"),
            dim=number("hidden_size"),
            n_layers=number("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=number("num_key_value_heads", n_heads) if cfg.get("num_key_value_heads") else n_heads,
            hidden_dim=number("intermediate_size"),
            max_seq_len=number("max_position_embeddings", 2048),
            rope_theta=number("rope_theta", 10000.0, float),
            norm_eps=number("rms_norm_eps", 1e-5, float),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            head_dim=number("head_dim", 0) if cfg.get("head_dim") else 0,  # 0: hidden_size // n_heads, once checked
        )

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
