"""The same benchmark run on other engines, for side-by-side ratios (bench --against-*).

Optional: llama-cpp-python (llama.cpp on the very same GGUF, same thread count) and
transformers (fp32, same file). Neither is a project requirement (requirements-bench.txt).
Both get our prompt token ids, so every engine sees identical inputs; decode is greedy
and runs exactly `max_tokens` tokens.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


_LOG_CALLBACK: Any = None  # kept alive: llama.cpp calls it from C


def _quiet_llamacpp(L: Any) -> None:
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = L.llama_log_callback(lambda level, text, user_data: None)
        L.llama_log_set(_LOG_CALLBACK, None)


def run_llamacpp(
    path: Path, prompt: list[int], *, max_tokens: int, runs: int, concurrency: tuple[int, ...], threads: int
) -> dict[str, Any]:
    """llama.cpp through its C API (llama_cpp low-level bindings): one context with a sequence
    per concurrent request, each decode step one llama_decode over every sequence's token
    (its own continuous batching, as in llama.cpp's `batched` example and server)."""
    import llama_cpp as L
    import numpy as np

    L.llama_backend_init()
    _quiet_llamacpp(L)
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    n_seq = max(concurrency)
    per_seq = len(prompt) + max_tokens + 8
    cp = L.llama_context_default_params()
    cp.n_ctx = n_seq * per_seq
    cp.n_batch = max(len(prompt), n_seq)
    cp.n_ubatch = cp.n_batch
    cp.n_seq_max = n_seq
    cp.n_threads = cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(cp.n_batch, 0, n_seq)

    def fill(items: list[tuple[int, int, int, bool]]) -> None:  # (token, pos, seq, wants logits)
        batch.n_tokens = len(items)
        for i, (tok, pos, seq, out) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = tok, pos, 1, seq, out

    def argmax(i: int) -> int:
        return int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).argmax())

    def generate(n: int, new_tokens: int) -> tuple[float, float]:
        """n sequences, prefilled one after another then decoded together; (ttft of seq 0, wall)."""
        L.llama_memory_clear(memory, True)
        start = time.perf_counter()
        last, ttft = [], 0.0
        for s in range(n):
            fill([(t, p, s, p == len(prompt) - 1) for p, t in enumerate(prompt)])
            assert L.llama_decode(ctx, batch) == 0
            last.append(argmax(len(prompt) - 1))
            if s == 0:
                ttft = time.perf_counter() - start
        for step in range(new_tokens - 1):
            fill([(last[s], len(prompt) + step, s, True) for s in range(n)])
            assert L.llama_decode(ctx, batch) == 0
            last = [argmax(s) for s in range(n)]
        return ttft, time.perf_counter() - start

    try:
        generate(1, 4)  # warm-up
        prefill, ttft, single = [], [], []
        for _ in range(runs):
            t, _wall = generate(1, 1)
            prefill.append(len(prompt) / t)
            t, wall = generate(1, max_tokens)
            ttft.append(t)
            single.append((max_tokens - 1) / (wall - t))
        aggregate = {str(n): statistics.median(n * max_tokens / generate(n, max_tokens)[1] for _ in range(runs)) for n in concurrency}
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    return {
        "engine": f"llama.cpp (llama-cpp-python {L.__version__})",
        "threads": threads,
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(single),
        "ttft_s": statistics.median(ttft),
        "aggregate_tokens_per_s": aggregate,
        "aggregate_best_tokens_per_s": max(aggregate.values()),
    }


def run_llamacpp_best(
    path: Path, prompt: list[int], *, max_tokens: int, runs: int, concurrency: tuple[int, ...], thread_counts: Iterable[int]
) -> dict[str, Any]:
    """run_llamacpp at each thread count; the figures of the count with the best one-stream decode, and under
    "by_threads" each count's decode and best aggregate (on a busy host its best count is not the core count)."""
    runs_by_threads = {n: run_llamacpp(path, prompt, max_tokens=max_tokens, runs=runs, concurrency=concurrency, threads=n)
                       for n in thread_counts}
    best = max(runs_by_threads.values(), key=lambda r: r["decode_tokens_per_s"])
    best["aggregate_best_tokens_per_s"] = max(r["aggregate_best_tokens_per_s"] for r in runs_by_threads.values())
    best["by_threads"] = {str(n): {"decode_tokens_per_s": r["decode_tokens_per_s"],
                                   "aggregate_tokens_per_s": r["aggregate_tokens_per_s"]} for n, r in runs_by_threads.items()}
    return best


def run_transformers(path: Path, prompt: list[int], *, max_tokens: int, runs: int) -> dict[str, Any]:
    """Hugging Face transformers, fp32 on CPU, loading the same GGUF (it dequantizes on load)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        assert out.shape[1] == len(prompt) + n
        return time.perf_counter() - start

    timed(4)  # warm-up
    prefill, ttft, single = [], [], []
    for _ in range(runs):
        t = timed(1)
        prefill.append(len(prompt) / t)
        ttft.append(t)
        single.append((max_tokens - 1) / (timed(max_tokens) - t))
    return {
        "engine": f"transformers {transformers.__version__} (fp32)",
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(single),
        "ttft_s": statistics.median(ttft),
    }


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """ours / theirs for each figure (ttft inverted, so > 1 always means we are better)."""
    out = {
        "prefill": ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"],
        "decode": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "ttft": theirs["ttft_s"] / ours["ttft_s"],
    }
    if "aggregate_tokens_per_s" in theirs:
        for n, v in theirs["aggregate_tokens_per_s"].items():
            if n in ours["aggregate_tokens_per_s"]:
                out[f"aggregate_{n}"] = ours["aggregate_tokens_per_s"][n] / v
        top = str(max(int(n) for n in ours["aggregate_tokens_per_s"]))
        out[f"aggregate_{top}_vs_best"] = ours["aggregate_tokens_per_s"][top] / theirs["aggregate_best_tokens_per_s"]
    return out
