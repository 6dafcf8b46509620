"""python manage.py bench [--json] [--max-tokens N] [--runs K] [--checkpoint PATH] [--quantization Q]
[--threads T] [--busy N] [--concurrency 1,4,16] [--prompt-tokens N] [--logprobs N] [--no-recording]
[--against-llamacpp] [--against-transformers]"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelzoo.engine.bench import run_bench
from modelzoo.engine.checkpoint import DTYPES
from modelzoo.engine.sampling import MAX_LOGPROBS


class Command(BaseCommand):
    help = "Benchmark the engine on the bundled model: prefill, decode and batched throughput, TTFT, peak RSS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per request")
        parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
        parser.add_argument("--checkpoint", default=None, help="GGUF file or safetensors directory (default: bundled)")
        parser.add_argument("--quantization", choices=["none", "int8", "int4"], default=None,
                            help="weight-only quantization of our engine (default: the engine's default)")
        parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                            help="weights' dtype (default: the engine's default for the device)")
        parser.add_argument("--threads", type=int, default=None,
                            help="torch threads (default: ENGINE_THREADS, or the automatic policy the worker uses)")
        parser.add_argument("--busy", type=int, default=0,
                            help="run N busy-loop processes beside the benchmark (and beside llama.cpp)")
        parser.add_argument("--concurrency", default="1,4,16", help="concurrent requests of the aggregate figures")
        parser.add_argument("--prompt-tokens", type=int, default=200, help="about this many prompt tokens")
        parser.add_argument("--logprobs", type=int, default=None, metavar="N",
                            help=f"also measure one stream and the aggregates with token log-probabilities and N "
                                 f"(0-{MAX_LOGPROBS}) alternatives per token, each run beside the same run without")
        parser.add_argument("--no-recording", action="store_true",
                            help="run one-stream decode steps eagerly instead of as the recorded graph the worker uses")
        parser.add_argument("--no-block-kernels", action="store_true",
                            help="pack a GGUF's Q4_1 / Q8_0 weights as float16 for FBGEMM instead of computing from "
                                 "their blocks (ENGINE_BLOCK_KERNELS=0)")
        parser.add_argument("--against-llamacpp", action="store_true",
                            help="also run llama.cpp (llama-cpp-python) on the same GGUF and print ratios")
        parser.add_argument("--against-transformers", action="store_true",
                            help="also run Hugging Face transformers (fp32) on the same file and print ratios")

    def handle(self, *args: Any, **opts: Any) -> None:
        extra: dict[str, Any] = {}
        if opts["quantization"] is not None:
            extra["quantization"] = None if opts["quantization"] == "none" else opts["quantization"]
        if opts["dtype"] is not None:
            extra["dtype"] = DTYPES[opts["dtype"]]
        try:
            concurrency = tuple(sorted({int(n) for n in opts["concurrency"].split(",") if n.strip()}))
        except ValueError:
            raise CommandError(f"--concurrency: a comma list of numbers, got {opts['concurrency']!r}") from None
        if not concurrency or min(concurrency) < 1:
            raise CommandError("--concurrency: numbers of at least 1")
        if opts["busy"] < 0 or opts["prompt_tokens"] < 1 or (opts["threads"] is not None and opts["threads"] < 1):
            raise CommandError("--busy must be >= 0, --prompt-tokens and --threads >= 1")
        if opts["logprobs"] is not None and not 0 <= opts["logprobs"] <= MAX_LOGPROBS:
            raise CommandError(f"--logprobs must be in 0..{MAX_LOGPROBS}")
        threads = opts["threads"] or settings.ENGINE_THREADS or None  # None: the worker's adaptive policy
        result = run_bench(opts["checkpoint"], max_tokens=opts["max_tokens"], runs=opts["runs"], threads=threads,
                           busy=opts["busy"], concurrency=concurrency, prompt_tokens=opts["prompt_tokens"],
                           logprobs=opts["logprobs"], recording=not opts["no_recording"],
                           block_kernels=settings.ENGINE_BLOCK_KERNELS and not opts["no_block_kernels"],
                           against_llamacpp=opts["against_llamacpp"], against_transformers=opts["against_transformers"], **extra)
        if opts["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(f"{result['checkpoint']} on {result['device']} ({result['dtype']}, weights "
                          f"{result['quantization'] or 'float'}, {result['block_linears']} products from GGUF blocks, "
                          f"{result['torch_threads']}->{result['torch_threads_at_end']} threads "
                          f"({result['thread_policy']}), load average "
                          f"{result['load_average']:.2f}, {result['busy']} busy processes beside it)")
        self.stdout.write(f"  load                 {result['load_s']:.1f} s")
        self.stdout.write(f"  prefill              {result['prefill_tokens_per_s']:.0f} tok/s ({result['prompt_tokens']}-token prompt)")
        recorded = ", ".join(map(str, result["recorded_batch_sizes"])) or "none"
        self.stdout.write(f"  decode, one stream   {result['decode_tokens_per_s']:.1f} tok/s (recorded steps: {recorded} rows)")
        self.stdout.write(f"  time to first token  {result['ttft_s'] * 1000:.0f} ms")
        for n, tps in result["aggregate_tokens_per_s"].items():
            self.stdout.write(f"  aggregate, {n:>2} streams {tps:.1f} tok/s")
        self.stdout.write(f"  peak RSS             {result['peak_rss_mb']:.0f} MB")
        if "logprobs" in result:
            lp = result["logprobs"]
            self.stdout.write(f"with log-probabilities and {lp['top_logprobs']} alternatives per token: "
                              "with / without (1.00 = free)")
            self.stdout.write(f"  decode, one stream   {lp['decode_tokens_per_s']:.1f} tok/s   x{lp['ratios']['decode']:.3f}")
            for n, tps in lp["aggregate_tokens_per_s"].items():
                self.stdout.write(f"  aggregate, {n:>2} streams {tps:.1f} tok/s   x{lp['ratios'][f'aggregate_{n}']:.3f}")
        for key in ("llamacpp", "transformers"):
            other = result.get(key)
            if other is None:
                continue
            if "error" in other:
                self.stdout.write(f"{key}: {other['error']}")
                continue
            self.stdout.write(f"{other['engine']}: ours / theirs (> 1 means we are faster)")
            self.stdout.write(f"  prefill              {other['prefill_tokens_per_s']:.0f} tok/s   x{other['ratios']['prefill']:.2f}")
            self.stdout.write(f"  decode, one stream   {other['decode_tokens_per_s']:.1f} tok/s   x{other['ratios']['decode']:.2f}")
            self.stdout.write(f"  time to first token  {other['ttft_s'] * 1000:.0f} ms   x{other['ratios']['ttft']:.2f}")
            for n, tps in other.get("aggregate_tokens_per_s", {}).items():
                self.stdout.write(f"  aggregate, {n:>2} streams {tps:.1f} tok/s   x{other['ratios'][f'aggregate_{n}']:.2f}")
            for name, ratio in other["ratios"].items():
                if name.endswith("_vs_best"):
                    self.stdout.write(f"  {name}   x{ratio:.2f}")
