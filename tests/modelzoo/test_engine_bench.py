"""`manage.py bench --json` runs end to end and reports every field: on the bundled model, and with its options
on a tiny random-weight GGUF (`--checkpoint`), which costs a fraction of a second instead of a model load."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from tests.modelzoo.gguf_factory import write_tiny_gguf


def bench(*args: str) -> dict[str, Any]:
    """One run of each figure (no median of three), as JSON."""
    out = StringIO()
    call_command("bench", "--json", "--runs", "1", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny GGUF whose context holds the bench's ~200-token prompt and its answers."""
    return str(write_tiny_gguf(tmp_path_factory.mktemp("bench") / "tiny.gguf", context_length=1024))


@pytest.mark.slow
def test_it_reports_every_benchmark_figure_as_json():
    result = bench("--max-tokens", "4")
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_rss_mb", "load_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert set(result["aggregate_tokens_per_s"]) == {"1", "4", "16"}
    assert all(v > 0 for v in result["aggregate_tokens_per_s"].values())
    assert result["prompt_tokens"] >= 200 and result["max_tokens"] == 4 and result["runs"] == 1
    assert result["checkpoint"].endswith(".gguf") and result["device"] in ("cpu", "cuda", "cuda:0")
    from modelzoo.engine import kernels

    blocks = kernels.faster_here()  # the bundled Q4_1 file's 121 products from its blocks, where our kernels are used
    assert result["block_linears"] == (121 if blocks else 0)
    if result["device"] != "cpu":
        assert result["recorded_batch_sizes"] == []
    elif blocks:  # graphs over block products cost no memory: every batch size that ran is recorded
        assert {1, 4, 16} <= set(result["recorded_batch_sizes"]) <= set(range(1, 17))
    else:
        assert result["recorded_batch_sizes"] == [1]


def test_it_says_when_the_other_engines_are_missing(monkeypatch, tiny):
    from modelzoo.engine import bench_others

    monkeypatch.setattr(bench_others, "available", lambda module: False)
    result = bench("--checkpoint", tiny, "--max-tokens", "2", "--against-llamacpp", "--against-transformers")
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


def test_it_benchmarks_the_weights_in_another_dtype_when_asked(tiny):
    result = bench("--checkpoint", tiny, "--max-tokens", "2", "--dtype", "float32")
    assert result["dtype"] == "float32" and result["decode_tokens_per_s"] > 0


def test_it_runs_beside_busy_processes_and_stops_them(tiny):
    import multiprocessing

    result = bench("--checkpoint", tiny, "--max-tokens", "2", "--busy", "1", "--concurrency", "1,2",
                   "--prompt-tokens", "16", "--threads", "1")
    assert result["busy"] == 1 and result["torch_threads"] == 1 and result["thread_policy"] == "fixed"
    assert set(result["aggregate_tokens_per_s"]) == {"1", "2"} and result["decode_tokens_per_s"] > 0
    assert result["prompt_tokens"] >= 16 and "load_average_before" in result
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("bench-busy")]


def test_the_busy_processes_are_stopped_when_the_run_fails():
    import multiprocessing

    from modelzoo.engine.bench import busy_neighbours

    with pytest.raises(RuntimeError), busy_neighbours(2) as processes:
        assert all(p.is_alive() for p in processes)
        raise RuntimeError("the run failed")
    assert not any(p.is_alive() for p in processes)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("bench-busy")]


def test_it_measures_decode_with_log_probabilities_beside_without(tiny):
    result = bench("--checkpoint", tiny, "--max-tokens", "3", "--concurrency", "1,2", "--prompt-tokens", "16",
                   "--logprobs", "5")
    lp = result["logprobs"]
    assert lp["top_logprobs"] == 5 and lp["decode_tokens_per_s"] > 0
    assert set(lp["aggregate_tokens_per_s"]) == {"1", "2"} and all(v > 0 for v in lp["aggregate_tokens_per_s"].values())
    assert lp["ratios"]["decode"] == pytest.approx(lp["decode_tokens_per_s"] / result["decode_tokens_per_s"])
    assert lp["ratios"]["aggregate_2"] == pytest.approx(
        lp["aggregate_tokens_per_s"]["2"] / result["aggregate_tokens_per_s"]["2"])
    assert "logprobs" not in bench("--checkpoint", tiny, "--max-tokens", "2", "--concurrency", "1",
                                   "--prompt-tokens", "16")


def test_it_prints_the_log_probability_figures(tiny):
    out = StringIO()
    call_command("bench", "--runs", "1", "--checkpoint", tiny, "--max-tokens", "2", "--concurrency", "1",
                 "--prompt-tokens", "16", "--logprobs", "0", stdout=out)
    assert "with log-probabilities and 0 alternatives per token" in out.getvalue()
    assert "aggregate,  1 streams" in out.getvalue().split("with log-probabilities")[1]


@pytest.mark.parametrize("value", ["-1", "21"])
def test_it_refuses_log_probabilities_out_of_bounds(value):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--logprobs must be in 0..20"):
        call_command("bench", "--logprobs", value)


def test_it_measures_the_recorded_one_stream_step_unless_told_not_to(tiny):
    args = ("--checkpoint", tiny, "--max-tokens", "3", "--concurrency", "1")
    assert bench(*args)["recorded_batch_sizes"] == [1]
    assert bench(*args, "--no-recording")["recorded_batch_sizes"] == []


def test_it_computes_a_ggufs_q4_1_weights_from_their_blocks_unless_told_not_to(tmp_path, monkeypatch):
    from modelzoo.engine import kernels

    monkeypatch.setattr(kernels, "faster_here", lambda: True)  # as on an AVX-512 host, whatever this one is
    path = str(write_tiny_gguf(tmp_path / "q4.gguf", context_length=1024, weight_types={"": "Q4_1"}))
    args = ("--checkpoint", path, "--max-tokens", "3", "--concurrency", "1")
    assert bench(*args)["block_linears"] == 2 * 4 + 1  # wqkv, wo, w13, w2 per layer and the head
    assert bench(*args, "--no-block-kernels")["block_linears"] == 0
