"""Engine benchmark on a checkpoint (the bundled SmolLM2 by default). A script, not a test.

Every figure is the median of `runs` runs. Decode runs ignore end-of-sequence so each
request produces exactly `max_tokens` tokens.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .checkpoint import default_checkpoint_path, load_checkpoint
from .engine import Engine
from .sampling import SamplingParams

log = logging.getLogger(__name__)

PARAGRAPH = (
    "The history of computing is a story of people building tools to think faster. Early machines filled rooms, "
    "and programs were wired by hand; later, stored programs, compilers and operating systems let one computer "
    "serve many people at once. "
)


def bench_prompt(tokenizer: Any, chat_template: Any, n_tokens: int) -> list[int]:
    """A chat-templated prompt of about n_tokens tokens."""
    content = ""
    ids: list[int] = []
    while len(ids) < n_tokens:
        content += PARAGRAPH
        ids = tokenizer.encode(chat_template.render([{"role": "user", "content": content + "\nSummarize this."}]))
    return ids


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_bench(
    path: str | Path | None = None,
    *,
    max_tokens: int = 128,
    runs: int = 3,
    prompt_tokens: int = 200,
    concurrency: tuple[int, ...] = (1, 4, 16),
    device: str | None = None,
) -> dict[str, Any]:
    path = Path(path) if path else default_checkpoint_path()
    t0 = time.perf_counter()
    ckpt = load_checkpoint(path, device=device)
    load_s = time.perf_counter() - t0
    max_batch = max(concurrency)
    prompt = bench_prompt(ckpt.tokenizer, ckpt.chat_template, prompt_tokens)
    engine = Engine(ckpt, max_batch_size=max_batch, max_seq_len=len(prompt) + max_tokens + 8)
    decode = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    try:
        engine.generate(prompt, SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        prefill, ttft, single = [], [], []
        for _ in range(runs):
            r = engine.generate(prompt, SamplingParams(max_tokens=1))
            prefill.append(len(prompt) / r.ttft_s)
            r = engine.generate(prompt, decode)
            ttft.append(r.ttft_s)
            single.append(r.tokens_per_s)
        aggregate: dict[str, float] = {}
        for n in concurrency:
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                with ThreadPoolExecutor(n) as ex:
                    results = list(ex.map(lambda _: engine.generate(prompt, decode), range(n)))
                wall = time.perf_counter() - start
                samples.append(sum(len(r.token_ids) for r in results) / wall)
            aggregate[str(n)] = statistics.median(samples)
    finally:
        engine.close()
    return {
        "checkpoint": path.name,
        "device": str(ckpt.device),
        "dtype": str(ckpt.model.tok_embeddings.weight.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "max_tokens": max_tokens,
        "prompt_tokens": len(prompt),
        "load_s": load_s,
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(single),
        "ttft_s": statistics.median(ttft),
        "aggregate_tokens_per_s": aggregate,
        "peak_rss_mb": peak_rss_mb(),
    }
