"""Llama-family decoder (Llama, Mistral, SmolLM, Qwen2-style q/k/v biases). Layers only, no I/O.

Shapes: B batch rows, T new tokens per row, S cache length, D dim, H query heads,
K key/value heads, hd head dim, F hidden (FFN) dim, V vocab.

q/k/v are one fused Linear (wqkv) and gate/up one fused Linear (w13); checkpoints in
the unfused layout are fused layer by layer while loading (loading.py).

The forward pass takes the tokens and, for a cached pass, one `Step` (positions, cache
slots, mask, the caches) built by the engine, so that one call serves prefill
(T = prompt length) and batched decode (T = 1, rows at different positions).
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class RMSNorm(nn.Module):
    #: float32 rows are normalized by our kernel (kernels/rms_norm.cpp; Transformer.use_kernels).
    kernel: bool = False

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if self.kernel and not (x.requires_grad or self.weight.requires_grad):  # the kernel has no backward
                return torch.ops.llmsite.rms_norm(x, self.weight, self.eps)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused op instead of six
        # Normalize in float32 like the reference, then cast back (matters under bf16).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables for HF's rotate_half layout. positions: (B, T) -> (B, T, 1, hd) each.

    rotate_half(x) * sin == x.roll(hd/2) * signed_sin with the first half of sin negated,
    bit for bit, so apply_rope needs one roll instead of two slices, a negation and a cat."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None]  # (B, T, 1, hd): broadcasts over heads
    sin = emb.sin()
    signed_sin = torch.cat([-sin[..., : head_dim // 2], sin[..., head_dim // 2 :]], dim=-1)
    return emb.cos().to(dtype), signed_sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, heads, hd); rotate_half pairs dimension i with i + hd/2
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros that take memory only where written: on CPU an anonymous mmap, whose pages the
    kernel hands out zero-filled on first touch (torch.zeros writes every page up front, so
    an 8 x 2048-position cache would cost its full size before the first request)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)  # the tensor keeps the mmap alive


class KVCache(nn.Module):
    """Preallocated per-layer cache, one slot per batch row, indexed by position.

    Zero-filled (lazily, see lazy_zeros), so positions that are masked out hold finite values
    and can never inject NaN into attention. Rows read back in another dtype are converted into
    `read_buffer`, one flat scratch tensor that all layers share (they attend one after
    another): converting into fresh tensors cost 4x more on CPU, mostly page faults.
    """

    def __init__(
        self, slots: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype, device: torch.device,
        read_buffer: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        shape = (slots, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", lazy_zeros(shape, dtype, device), persistent=False)
        self.register_buffer("v", lazy_zeros(shape, dtype, device), persistent=False)
        self.read_buffer = read_buffer  # (2, slots * n_kv_heads * max_seq_len * head_dim) or None

    @classmethod
    def of(cls, k: torch.Tensor, v: torch.Tensor, read_buffer: torch.Tensor | None) -> KVCache:
        """A cache over existing buffers (how a recorded decode step takes the caches as inputs; traced.py)."""
        cache = cls.__new__(cls)
        nn.Module.__init__(cache)
        cache.register_buffer("k", k, persistent=False)
        cache.register_buffer("v", v, persistent=False)
        cache.read_buffer = read_buffer
        return cache

    def write(self, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k/v (B, K, T, hd) at (slot, position) per row."""
        # slots (B, 1) and positions (B, T) broadcast to (B, T); advanced indexing puts them first: (B, T, K, hd)
        self.k[slots[:, None], :, positions] = k.transpose(1, 2).to(self.k.dtype)
        self.v[slots[:, None], :, positions] = v.transpose(1, 2).to(self.v.dtype)

    def update(
        self, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int,
        first_slots: bool = False, dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, K, T, hd) at (slot, position) per row; return each row's first `length`
        cached positions (B, K, length, hd), in `dtype` (default: k's).

        `first_slots` promises slots == arange(B) (the engine keeps its batch packed that way)."""
        self.write(slots, positions, k, v)
        B = slots.shape[0]
        if first_slots:  # rows are slots 0..B-1 in order: a view
            k_rows, v_rows = self.k[:B, :, :length], self.v[:B, :, :length]
        else:  # narrow first, then gather rows: copies only (B, K, length, hd)
            k_rows = self.k[:, :, :length].index_select(0, slots)
            v_rows = self.v[:, :, :length].index_select(0, slots)
        dtype = dtype or k.dtype
        if dtype == self.k.dtype:
            return k_rows, v_rows
        if self.read_buffer is None or self.read_buffer.dtype != dtype:
            return k_rows.to(dtype), v_rows.to(dtype)
        n = k_rows.numel()
        k_out = self.read_buffer[0, :n].view(k_rows.shape).copy_(k_rows)
        v_out = self.read_buffer[1, :n].view(v_rows.shape).copy_(v_rows)
        return k_out, v_out


@dataclass(frozen=True, eq=False)
class Step:
    """What a cached forward pass needs beside the tokens (B, T): built by the engine once per
    prefill or decode step and handed down to every layer.

    S is the number of cache positions the step attends to (the longest row's length). In a
    decode step (T == 1) Transformer.forward swaps the bool mask for decode_attention's additive
    bias (B * K, n_rep, S), once for all layers."""

    positions: torch.Tensor  # (B, T) long: the cache position of each new token
    slots: torch.Tensor  # (B,) long: the cache slot each row writes and reads
    mask: torch.Tensor  # (B, 1, T, S) bool: query t of row b may attend cache position s
    caches: list[KVCache]  # one per layer, (slots, K, max_seq_len, hd) each for k and v
    logit_index: torch.Tensor | None = None  # (B,) long: the one position per row whose logits are wanted
    first_slots: bool = False  # promises slots == arange(B): cache rows are read as a view, not gathered
    in_place: bool = False  # a decode step attends from the float16 cache by our kernel (Transformer.attention_kernel)

    @property
    def length(self) -> int:
        """S: how many cache positions each row reads back."""
        return self.mask.shape[-1]


def attention_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype attention runs in: float32 for float16 on CPU, where torch's float16
    attention kernels are ~10x slower than its float32 ones (a decode step spent a third
    of its time there); the compute dtype otherwise."""
    return torch.float32 if dtype == torch.float16 and device.type == "cpu" else dtype


def decode_bias(mask: torch.Tensor, n_kv_heads: int, n_rep: int, dtype: torch.dtype) -> torch.Tensor:
    """A decode step's mask (B, 1, 1, S) bool as the additive bias decode_attention takes,
    (B * n_kv_heads, n_rep, S) in the attention dtype with -inf where masked; built once per step."""
    B, S = mask.shape[0], mask.shape[-1]
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias.expand(B, n_kv_heads, n_rep, S).reshape(B * n_kv_heads, n_rep, S)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One new position per row: q (B, H, 1, hd), k/v (B, K, S, hd), bias from decode_bias -> (B, H, 1, hd).

    Written out rather than SDPA because each row's result must not depend on the batch:
    torch's CPU SDPA splits its work by batch size and its sums then differ in the last
    bits (logits moved by ~1e-5), while batched matmuls and softmax compute every row the
    same way. Three ops, about as fast as SDPA: the scale and the mask ride on baddbmm."""
    B, H, _, hd = q.shape
    K, S = k.shape[1], k.shape[2]
    scores = torch.baddbmm(bias, q.reshape(B * K, H // K, hd), k.reshape(B * K, S, hd).transpose(1, 2), alpha=hd**-0.5)
    return torch.bmm(scores.softmax(-1), v.reshape(B * K, S, hd)).view(B, H, 1, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wqkv = nn.Linear(cfg.dim, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.q_size, cfg.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: Step | None, cache: KVCache | None
    ) -> torch.Tensor:
        """x (B, T, D), cos/sin (B, T, 1, hd) -> (B, T, D). Without a step: plain causal attention over x.
        With one: write this layer's `cache` and attend to its first step.length positions; step.mask is
        then (B, 1, T, S) bool in prefill, or decode_attention's bias when T == 1 (Transformer.forward)."""
        cfg = self.cfg
        B, T, _ = x.shape
        H, K = cfg.n_heads, cfg.n_kv_heads
        qkv = self.wqkv(x)
        if step is not None and cache is not None and step.in_place:  # rotate, write the cache, attend: one call
            return self.wo(torch.ops.llmsite.decode_attention(qkv, cos, sin, cache.k, cache.v, step.slots,
                                                              step.positions, cfg.head_dim**-0.5))  # (B, 1, H*hd)
        qkv = qkv.view(B, T, H + 2 * K, cfg.head_dim)  # heads: H query, K key, K value
        qk = apply_rope(qkv[:, :, : H + K], cos, sin)  # q and k heads rotated in one go
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, hd)
        k = qk[:, :, H:].transpose(1, 2)  # (B, K, T, hd)
        v = qkv[:, :, H + K :].transpose(1, 2)  # (B, K, T, hd)
        dtype = attention_dtype(x.dtype, x.device)
        q = q.to(dtype)
        gqa = cfg.n_rep > 1  # SDPA shares each k/v head among n_rep query heads without copying
        if step is None or cache is None:
            k, v = k.to(dtype), v.to(dtype)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # no cache: plain causal
        else:
            k, v = cache.update(step.slots, step.positions, k, v, step.length, step.first_slots, dtype)  # (B, K, S, hd)
            if T == 1:
                y = decode_attention(q, k, v, step.mask)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, cfg.q_size).to(x.dtype)  # (B, T, H*hd)
        return self.wo(y)


class FeedForward(nn.Module):
    #: float32 gates by our kernel (kernels/silu_mul.cpp; Transformer.use_kernels).
    kernel: bool = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden_dim = cfg.hidden_dim
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)  # gate (w1) and up (w3), fused
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.w13(x)  # (B, T, 2F)
        if self.kernel and gate_up.dtype == torch.float32 and not gate_up.requires_grad:  # the kernel has no backward
            return self.w2(torch.ops.llmsite.silu_mul(gate_up))
        gate, up = gate_up.split(self.hidden_dim, dim=-1)  # (B, T, F) each
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: Step | None, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, step, cache)  # (B, T, D)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    #: Compute dtype when it differs from the weights' (float16 weights packed for float32 products).
    activation_dtype: torch.dtype | None = None
    #: Decode steps over float16 caches on CPU attend with our kernel, reading the cache in place
    #: (kernels/decode_attention.cpp); see use_kernels.
    attention_kernel: bool = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def make_caches(self, slots: int, max_seq_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """A KV cache per layer, (slots, K, max_seq_len, hd) for k and for v; owned by the caller
        (an Engine), so several engines may share one model. When attention runs in another
        dtype than the cache's, the layers share one scratch buffer to read into."""
        p = self.tok_embeddings.weight
        cfg = self.cfg
        dtype = dtype or p.dtype
        read_dtype = attention_dtype(self.activation_dtype or p.dtype, p.device)
        read_buffer = None
        if read_dtype != dtype:
            read_buffer = torch.empty(2, slots * cfg.n_kv_heads * max_seq_len * cfg.head_dim, dtype=read_dtype, device=p.device)
        return [KVCache(slots, cfg.n_kv_heads, max_seq_len, cfg.head_dim, dtype, p.device, read_buffer) for _ in self.layers]

    def use_kernels(self) -> None:
        """Attend, normalize and gate with our CPU kernels (modelzoo/engine/kernels/; the caller checks they are built)."""
        self.attention_kernel = True
        for module in self.modules():
            if isinstance(module, RMSNorm) and module.weight.shape[-1] % 16 == 0:
                module.kernel = True
            if isinstance(module, FeedForward) and module.hidden_dim % 16 == 0:
                module.kernel = True

    def _attends_in_place(self, cache: KVCache, dtype: torch.dtype) -> bool:
        """Whether decode steps attend with our kernel: float16 cache, float32 activations, heads of 16k values."""
        return (self.attention_kernel and cache.k.dtype == torch.float16 and dtype == torch.float32
                and self.cfg.head_dim % 16 == 0)

    def forward(self, tokens: torch.Tensor, step: Step | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V) in float32, or (B, 1, V) at step.logit_index.

        Without a step: a plain causal pass over the tokens from position 0 (no cache).
        With one: rows write their cache slots at step.positions and attend to cache
        positions [0, S) where step.mask allows (see Step).
        """
        B, T = tokens.shape
        positions = torch.arange(T, device=tokens.device).expand(B, T) if step is None else step.positions
        x = self.tok_embeddings(tokens)  # (B, T, D)
        if self.activation_dtype is not None:
            x = x.to(self.activation_dtype)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        if step is None:
            for layer in self.layers:
                x = layer(x, cos, sin, None, None)
        else:
            if T == 1 and self._attends_in_place(step.caches[0], x.dtype):
                step = replace(step, in_place=True)  # each row reads its own positions, no mask
            elif T == 1:  # a decode step: the mask becomes decode_attention's bias, once for all layers
                bias = decode_bias(step.mask, self.cfg.n_kv_heads, self.cfg.n_rep, attention_dtype(x.dtype, x.device))
                step = replace(step, mask=bias)  # (B * K, n_rep, S)
            for layer, cache in zip(self.layers, step.caches, strict=True):
                x = layer(x, cos, sin, step, cache)
        if step is not None and step.logit_index is not None:
            x = x[torch.arange(B, device=x.device), step.logit_index][:, None]  # (B, 1, D): only the logits we sample
        return self.output(self.norm(x)).float()  # (B, T, V)
