"""The figures of `manage.py loadtest` from what its requests measured: throughput, percentiles of time to first
token and end-to-end latency (overall and per user), the 429s and 503s with the Retry-After values seen, and
fairness between users. Pure: no Django, no I/O, so it is tested on made-up samples."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it, from its first send to its answer (retries and their waits included).

    `status` is the final HTTP status (None when no answer came: a connection error or a timeout, in `error`);
    `ttft_s` the time to the first streamed token (None unless streamed and one came); `rejections` the
    (status, Retry-After) of every 429 or 503 answered on the way, the final one included."""

    user: str
    status: int | None
    latency_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    rejections: tuple[tuple[int, str | None], ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between the closest ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in PERCENTILES}


@dataclass
class Summary:
    """The figures of one group of requests (everybody's, or one user's) over `duration_s` of wall time."""

    requests: int
    succeeded: int
    rate_limited: int  # 429 answers, retried ones included
    unavailable: int  # 503 answers, retried ones included
    errors: int  # requests that ended neither 200 nor 429/503 (other statuses, no answer, a broken stream)
    retry_after: dict[str, int]  # Retry-After value -> how many 429/503 carried it ("-" when absent)
    requests_per_s: float
    output_tokens: int
    output_tokens_per_s: float
    ttft_s: dict[str, float | None]
    latency_s: dict[str, float | None]
    users: dict[str, Summary] = field(default_factory=dict)
    #: The slowest user's median latency over the fastest's (1.0 = even); None with fewer than two users served.
    fairness: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "users"}
        if self.users:
            data["users"] = {user: summary.as_dict() for user, summary in self.users.items()}
        else:
            del data["fairness"]
        return data


def _summary(results: Sequence[RequestResult], duration_s: float) -> Summary:
    ok = [r for r in results if r.ok]
    rejections = [rejection for r in results for rejection in r.rejections]
    final_rejected = sum(1 for r in results if r.error is None and r.status in (429, 503))
    tokens = sum(r.output_tokens for r in ok)

    def per_s(n: int) -> float:
        return n / duration_s if duration_s > 0 else 0.0

    return Summary(
        requests=len(results),
        succeeded=len(ok),
        rate_limited=sum(1 for status, _ in rejections if status == 429),
        unavailable=sum(1 for status, _ in rejections if status == 503),
        errors=len(results) - len(ok) - final_rejected,
        retry_after=dict(sorted(Counter(value or "-" for _, value in rejections).items())),
        requests_per_s=per_s(len(ok)),
        output_tokens=tokens,
        output_tokens_per_s=per_s(tokens),
        ttft_s=percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        latency_s=percentiles([r.latency_s for r in ok]),
    )


def summarize(results: Iterable[RequestResult], *, duration_s: float) -> Summary:
    """Everybody's figures, each user's (`users`, in order of first appearance) and the fairness figure.
    Throughput counts successful requests and their output tokens over the whole run's `duration_s`, for
    everybody and for each user alike; percentiles are over successful requests only."""
    results = list(results)
    overall = _summary(results, duration_s)
    by_user: dict[str, list[RequestResult]] = {}
    for result in results:
        by_user.setdefault(result.user, []).append(result)
    overall.users = {user: _summary(rows, duration_s) for user, rows in by_user.items()}
    medians = [s.latency_s["p50"] for s in overall.users.values() if s.latency_s["p50"] is not None]
    if len(medians) >= 2 and min(medians) > 0:
        overall.fairness = max(medians) / min(medians)
    return overall
