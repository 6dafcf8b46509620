"""ModelConfig: one dataclass fixes every shape of the Llama-family decoder."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


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
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim == 0:
            hidden = int(2 * (4 * self.dim) / 3)
            self.hidden_dim = 256 * ((hidden + 255) // 256)
        assert self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        assert self.head_dim % 2 == 0, "rotary needs an even head_dim"

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
        model_type = cfg.get("model_type", "llama")
        n_heads = int(cfg["num_attention_heads"])
        return cls(
            arch=model_type,
            vocab_size=int(cfg["vocab_size"]),
            dim=int(cfg["hidden_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            hidden_dim=int(cfg["intermediate_size"]),
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // n_heads),
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
