"""generation.loadstats: the figures `manage.py loadtest` prints, from made-up request results."""
from __future__ import annotations

import pytest

from generation.loadstats import RequestResult, percentile, summarize


def ok(user: str, latency_s: float, *, ttft_s: float | None = None, tokens: int = 10, rejections=()) -> RequestResult:
    return RequestResult(user=user, status=200, latency_s=latency_s, ttft_s=ttft_s, output_tokens=tokens,
                         rejections=tuple(rejections))


def test_it_interpolates_percentiles_between_ranks_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 95) == pytest.approx(4.8)  # numpy.percentile([1..5], 95)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_it_counts_throughput_over_the_run_from_successful_requests_only():
    results = [ok("a", 1.0, tokens=16), ok("a", 2.0, tokens=16), ok("b", 1.5, tokens=8),
               RequestResult(user="b", status=500, latency_s=0.1, error="HTTP 500: boom")]
    summary = summarize(results, duration_s=4.0)
    assert (summary.requests, summary.succeeded, summary.errors) == (4, 3, 1)
    assert summary.requests_per_s == 0.75
    assert summary.output_tokens == 40 and summary.output_tokens_per_s == 10.0
    assert summary.latency_s == {"p50": 1.5, "p95": pytest.approx(1.95), "p99": pytest.approx(1.99)}
    assert summary.users["a"].requests_per_s == 0.5 and summary.users["b"].errors == 1


def test_it_counts_429s_and_503s_with_their_retry_after_values_and_not_as_errors():
    results = [
        RequestResult(user="a", status=429, latency_s=0.01, rejections=((429, "5"),)),
        RequestResult(user="a", status=429, latency_s=0.01, rejections=((429, "5"),)),
        ok("a", 3.0, rejections=[(429, "5"), (503, "10")]),  # retried twice, then served
        RequestResult(user="b", status=503, latency_s=0.02, rejections=((503, None),)),
    ]
    summary = summarize(results, duration_s=1.0)
    assert (summary.rate_limited, summary.unavailable, summary.errors, summary.succeeded) == (3, 2, 0, 1)
    assert summary.retry_after == {"-": 1, "10": 1, "5": 3}
    assert summary.users["a"].rate_limited == 3 and summary.users["b"].unavailable == 1
    # Percentiles cover served requests only: a fast 429 is not a fast answer.
    assert summary.latency_s["p50"] == 3.0


def test_it_takes_ttft_only_from_requests_that_measured_it():
    summary = summarize([ok("a", 1.0, ttft_s=0.2), ok("a", 1.0, ttft_s=0.4), ok("a", 1.0)], duration_s=1.0)
    assert summary.ttft_s["p50"] == pytest.approx(0.3)
    assert summarize([ok("a", 1.0)], duration_s=1.0).ttft_s == {"p50": None, "p95": None, "p99": None}


def test_it_gives_fairness_as_the_slowest_users_median_latency_over_the_fastests():
    results = [ok("a", 1.0), ok("a", 3.0), ok("b", 4.0), ok("b", 4.0), ok("c", 2.0),
               RequestResult(user="d", status=429, latency_s=0.01, rejections=((429, "5"),))]  # d: nothing served
    summary = summarize(results, duration_s=10.0)
    assert list(summary.users) == ["a", "b", "c", "d"]
    assert summary.fairness == 2.0  # b's median 4.0 over a's and c's 2.0
    assert summarize([ok("a", 1.0)], duration_s=1.0).fairness is None


def test_it_serializes_to_plain_data():
    data = summarize([ok("a", 1.0), ok("b", 2.0)], duration_s=1.0).as_dict()
    assert data["fairness"] == 2.0 and data["users"]["a"]["succeeded"] == 1
    assert "users" not in data["users"]["a"] and "fairness" not in data["users"]["a"]
