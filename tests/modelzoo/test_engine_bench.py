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


def test_it_says_when_the_other_engines_are_missing(monkeypatch):
    from modelzoo.engine import bench_others

    monkeypatch.setattr(bench_others, "available", lambda module: False)
    out = StringIO()
    call_command("bench", "--json", "--max-tokens", "2", "--runs", "1", "--against-llamacpp", "--against-transformers",
                 stdout=out)
    result = json.loads(out.getvalue())
    assert "not installed" in result["llamacpp"]["error"] and "not installed" in result["transformers"]["error"]


def test_it_computes_ratios_so_that_above_one_means_faster():
    from modelzoo.engine.bench_others import ratios

    ours = {"prefill_tokens_per_s": 200.0, "decode_tokens_per_s": 30.0, "ttft_s": 0.5,
            "aggregate_tokens_per_s": {"1": 30.0, "16": 160.0}}
    theirs = {"prefill_tokens_per_s": 400.0, "decode_tokens_per_s": 60.0, "ttft_s": 0.25,
              "aggregate_tokens_per_s": {"1": 60.0, "16": 80.0}, "aggregate_best_tokens_per_s": 80.0}
    r = ratios(ours, theirs)
    assert r == {"prefill": 0.5, "decode": 0.5, "ttft": 0.5, "aggregate_1": 0.5, "aggregate_16": 2.0,
                 "aggregate_16_vs_best": 2.0}


def test_it_benchmarks_the_weights_in_another_dtype_when_asked():
    out = StringIO()
    call_command("bench", "--json", "--max-tokens", "2", "--runs", "1", "--dtype", "float32", stdout=out)
    result = json.loads(out.getvalue())
    assert result["dtype"] == "float32" and result["decode_tokens_per_s"] > 0
