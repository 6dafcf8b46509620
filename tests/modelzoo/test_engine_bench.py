"""`manage.py bench --json` runs end to end on the bundled model and reports every field."""

from __future__ import annotations

import json
from io import StringIO

from django.core.management import call_command


def test_it_reports_every_benchmark_figure_as_json():
    out = StringIO()
    call_command("bench", "--json", "--max-tokens", "4", "--runs", "1", stdout=out)
    result = json.loads(out.getvalue())
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_rss_mb", "load_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert set(result["aggregate_tokens_per_s"]) == {"1", "4", "16"}
    assert all(v > 0 for v in result["aggregate_tokens_per_s"].values())
    assert result["prompt_tokens"] >= 200 and result["max_tokens"] == 4 and result["runs"] == 1
    assert result["checkpoint"].endswith(".gguf") and result["device"] in ("cpu", "cuda", "cuda:0")
