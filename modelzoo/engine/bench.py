"""Engine benchmark on a checkpoint (the bundled SmolLM2 by default). A script, not a test.

Every figure is the median of `runs` runs. Decode runs ignore end-of-sequence so each
request produces exactly `max_tokens` tokens. With `busy` N, N processes spin (`while True:
pass`) beside the whole run, ours and the other engines', as neighbours on a real host do.
With `logprobs` N, the one-stream and aggregate runs are each followed by the same run with
token log-probabilities and N alternatives per token (SamplingParams.logprobs), so the two
figures of a pair see the same neighbours; they are reported under "logprobs" with the ratios
with / without.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from . import bench_others
from .block_linear import BlockLinear
from .checkpoint import DEFAULT_QUANTIZATION, default_checkpoint_path, load_checkpoint
from .engine import Engine
from .sampling import SamplingParams
from .threads import ThreadGovernor, host_cores

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


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_neighbours(n: int) -> Iterator[list[multiprocessing.process.BaseProcess]]:
    """N busy-loop processes for the duration of the block; stopped and joined after it."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    processes = [context.Process(target=_spin, name=f"bench-busy-{i}", daemon=True) for i in range(n)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _aggregate_tokens_per_s(engine: Engine, prompt: list[int], params: SamplingParams, n: int) -> float:
    """Tokens/s of n identical requests sent at once (prefill included)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as ex:
        results = list(ex.map(lambda _: engine.generate(prompt, params), range(n)))
    return sum(len(r.token_ids) for r in results) / (time.perf_counter() - start)


def _logprobs_figures(top: int, without: dict[str, Any], decode: float, aggregate: dict[str, float]) -> dict[str, Any]:
    """The figures with log-probabilities beside the ratios with / without (1.0 = free; 0.97 = 3% slower)."""
    ratios = {"decode": decode / without["decode_tokens_per_s"]}
    ratios.update({f"aggregate_{n}": tps / without["aggregate_tokens_per_s"][n] for n, tps in aggregate.items()})
    return {"top_logprobs": top, "decode_tokens_per_s": decode, "aggregate_tokens_per_s": aggregate, "ratios": ratios}


def run_bench(
    path: str | Path | None = None,
    *,
    max_tokens: int = 128,
    runs: int = 3,
    prompt_tokens: int = 200,
    concurrency: tuple[int, ...] = (1, 4, 16),
    device: str | None = None,
    quantization: str | None = DEFAULT_QUANTIZATION,
    dtype: torch.dtype | None = None,
    against_llamacpp: bool = False,
    against_transformers: bool = False,
    threads: int | None = None,
    busy: int = 0,
    logprobs: int | None = None,
    recording: bool = True,
    block_kernels: bool = True,
) -> dict[str, Any]:
    """Our figures; with against_* also the other engine's on the same file, prompt and
    threads, and the ratios ours/theirs (under "llamacpp" / "transformers" and "ratios").
    `threads`: torch's thread count, fixed (None: the worker's policy, a ThreadGovernor that adapts to the
    load while the run goes on); `busy`: spinning processes beside the run; `logprobs`: also measure decode with
    log-probabilities and this many alternatives; `recording`: one-stream decode steps run as a recorded graph
    (traced.py; False measures the eager step); `block_kernels`: a GGUF's Q4_1 / Q8_0 weights are computed from their
    blocks (block_linear.py; False: packed float16 for FBGEMM). llama.cpp runs at each thread count up to the host's cores
    and is reported at its best."""
    load_before = os.getloadavg()[0]
    with busy_neighbours(busy):
        result = _run_bench(path, max_tokens=max_tokens, runs=runs, prompt_tokens=prompt_tokens,
                            concurrency=concurrency, device=device, quantization=quantization, dtype=dtype,
                            against_llamacpp=against_llamacpp, against_transformers=against_transformers,
                            logprobs=logprobs, threads=threads, recording=recording, block_kernels=block_kernels)
    result["busy"] = busy
    result["load_average_before"] = load_before
    return result


def _run_bench(
    path: str | Path | None,
    *,
    max_tokens: int,
    runs: int,
    prompt_tokens: int,
    concurrency: tuple[int, ...],
    device: str | None,
    quantization: str | None,
    dtype: torch.dtype | None,
    against_llamacpp: bool,
    against_transformers: bool,
    logprobs: int | None = None,
    threads: int | None = None,
    recording: bool = True,
    block_kernels: bool = True,
) -> dict[str, Any]:
    path = Path(path) if path else default_checkpoint_path()
    governor = ThreadGovernor(threads or 0)
    threads_at_start = governor.start()
    t0 = time.perf_counter()
    ckpt = load_checkpoint(path, device=device, quantization=quantization, dtype=dtype, block_kernels=block_kernels)
    load_s = time.perf_counter() - t0
    max_batch = max(concurrency)
    prompt = bench_prompt(ckpt.tokenizer, ckpt.chat_template, prompt_tokens)
    engine = Engine(ckpt, max_batch_size=max_batch, max_seq_len=len(prompt) + max_tokens + 8, governor=governor,
                    **({} if recording else {"recorded_batch_sizes": frozenset()}))
    decode = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    with_lp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, logprobs=logprobs) if logprobs is not None else None
    try:
        engine.generate(prompt, SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        engine.decoder.wait()  # the one-stream step it asked to record (traced.py), as a worker runs it after
        prefill, ttft, single, single_lp = [], [], [], []
        for _ in range(runs):
            r = engine.generate(prompt, SamplingParams(max_tokens=1))
            prefill.append(len(prompt) / r.ttft_s)
            r = engine.generate(prompt, decode)
            ttft.append(r.ttft_s)
            single.append(r.tokens_per_s)
            if with_lp is not None:
                single_lp.append(engine.generate(prompt, with_lp).tokens_per_s)
        aggregate: dict[str, float] = {}
        aggregate_lp: dict[str, float] = {}
        for n in concurrency:
            _aggregate_tokens_per_s(engine, prompt, SamplingParams(max_tokens=4, ignore_eos=True), n)  # warm-up
            engine.decoder.wait()  # the recording of this batch size, as a worker that served such batches has it
            samples, samples_lp = [], []
            for _ in range(runs):
                samples.append(_aggregate_tokens_per_s(engine, prompt, decode, n))
                if with_lp is not None:
                    samples_lp.append(_aggregate_tokens_per_s(engine, prompt, with_lp, n))
            aggregate[str(n)] = statistics.median(samples)
            if with_lp is not None:
                aggregate_lp[str(n)] = statistics.median(samples_lp)
        recorded = sorted(engine.decoder.ready())
    finally:
        engine.close()
    result = {
        "checkpoint": path.name,
        "device": str(ckpt.device),
        "dtype": str(ckpt.model.tok_embeddings.weight.dtype).removeprefix("torch."),
        "quantization": ckpt.quantization,
        "thread_policy": "fixed" if threads else "adaptive",
        "torch_threads": threads_at_start,
        "torch_threads_at_end": governor.threads,
        "block_linears": sum(isinstance(m, BlockLinear) for m in ckpt.model.modules()),  # products from GGUF blocks
        "recorded_batch_sizes": recorded,  # decode steps that ran as recorded graphs
        "runs": runs,
        "max_tokens": max_tokens,
        "prompt_tokens": len(prompt),
        "load_s": load_s,
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(single),
        "ttft_s": statistics.median(ttft),
        "aggregate_tokens_per_s": aggregate,
        "peak_rss_mb": peak_rss_mb(),  # before any other engine runs in this process
        "load_average": os.getloadavg()[0],
    }
    if with_lp is not None:
        result["logprobs"] = _logprobs_figures(logprobs, result, statistics.median(single_lp), aggregate_lp)
    del engine, ckpt
    if against_llamacpp:
        if bench_others.available("llama_cpp"):
            try:
                theirs = bench_others.run_llamacpp_best(path, prompt, max_tokens=max_tokens, runs=runs,
                                                        concurrency=concurrency, thread_counts=range(1, host_cores() + 1))
                result["llamacpp"] = {**theirs, "ratios": bench_others.ratios(result, theirs)}
            except Exception as exc:
                log.exception("llama.cpp run failed")
                result["llamacpp"] = {"error": f"llama.cpp failed: {exc}"}
        else:
            result["llamacpp"] = {"error": "llama-cpp-python is not installed (see requirements-bench.txt)"}
    if against_transformers:
        if bench_others.available("transformers"):
            try:
                theirs = bench_others.run_transformers(path, prompt, max_tokens=max_tokens, runs=runs)
                result["transformers"] = {**theirs, "ratios": bench_others.ratios(result, theirs)}
            except Exception as exc:  # an optional comparison must not lose the figures already measured
                log.exception("transformers run failed")
                result["transformers"] = {"error": f"transformers failed: {exc}"}
        else:
            result["transformers"] = {"error": "transformers is not installed (see requirements-bench.txt)"}
    return result
