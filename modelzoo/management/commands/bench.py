"""python manage.py bench [--json] [--max-tokens N] [--runs K] [--checkpoint PATH]"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from modelzoo.engine.bench import run_bench


class Command(BaseCommand):
    help = "Benchmark the engine on the bundled model: prefill, decode and batched throughput, TTFT, peak RSS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per request")
        parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
        parser.add_argument("--checkpoint", default=None, help="GGUF file or safetensors directory (default: bundled)")

    def handle(self, *args: Any, **opts: Any) -> None:
        result = run_bench(opts["checkpoint"], max_tokens=opts["max_tokens"], runs=opts["runs"])
        if opts["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(f"{result['checkpoint']} on {result['device']} ({result['dtype']}, {result['torch_threads']} threads)")
        self.stdout.write(f"  load                 {result['load_s']:.1f} s")
        self.stdout.write(f"  prefill              {result['prefill_tokens_per_s']:.0f} tok/s ({result['prompt_tokens']}-token prompt)")
        self.stdout.write(f"  decode, one stream   {result['decode_tokens_per_s']:.1f} tok/s")
        self.stdout.write(f"  time to first token  {result['ttft_s'] * 1000:.0f} ms")
        for n, tps in result["aggregate_tokens_per_s"].items():
            self.stdout.write(f"  aggregate, {n:>2} streams {tps:.1f} tok/s")
        self.stdout.write(f"  peak RSS             {result['peak_rss_mb']:.0f} MB")
