"""/metrics in the Prometheus text format (prometheus_client): jobs by state, queue depths, the last hour's queue
wait, time to first token and decode speed, and what each live worker holds.

Everything is read at scrape time by one custom Collector, from the database and from the Redis registry the
workers publish to. Nothing is counted in process: jobs run in worker processes on other hosts, so counters kept
in one web process would see none of them, and the database already records every job's times. The timing
histograms cover the jobs created in the last METRICS_WINDOW_S seconds (the created_at index keeps the query
cheap) and are exposed as gauge histograms: a job leaves its bucket when it leaves the window, so the buckets go
down as well as up. Read them without rate(), e.g.
`histogram_quantile(0.95, sum by (le) (llmsite_job_time_to_first_token_seconds_bucket))` is the window's p95.
"""
from __future__ import annotations

import hmac
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from generation.fleet import queues, registry
from generation.models import Job
from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)

QUEUE_WAIT_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def gauge_histogram(name: str, documentation: str, values: Sequence[float],
                    bounds: Sequence[float]) -> GaugeHistogramMetricFamily:
    """Cumulative buckets (`le` = upper bound, then +Inf) and the sum of `values`."""
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value: Prometheus buckets are `<= le`
    buckets, running = [], 0
    for bound, count in zip([*map(float, bounds), float("inf")], counts):
        running += count
        buckets.append((_le(bound), running))
    return GaugeHistogramMetricFamily(name, documentation, buckets=buckets, gsum_value=float(sum(values)))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class SiteCollector(Collector):
    """Jobs from the database and the fleet from Redis, read when Prometheus scrapes. When Redis cannot be read,
    llmsite_redis_up is 0 and the queue and worker families are left out; the job families still answer."""

    def collect(self) -> Iterator[Metric]:
        yield from self.job_metrics()
        yield from self.fleet_metrics()

    def job_metrics(self) -> Iterator[Metric]:
        by_state = dict(Job.objects.order_by().values_list("status").annotate(n=Count("pk")))
        jobs = GaugeMetricFamily("llmsite_jobs", "Jobs in the database by state", labels=["state"])
        for state in Job.Status.values:
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs

        since = timezone.now() - timedelta(seconds=settings.METRICS_WINDOW_S)
        rows = (Job.objects.filter(created_at__gte=since, started_at__isnull=False).order_by()
                .values_list("created_at", "started_at", "first_token_at", "completion_tokens", "decode_s"))
        waits, ttfts, speeds = [], [], []
        for created_at, started_at, first_token_at, completion_tokens, decode_s in rows.iterator(chunk_size=2000):
            waits.append(max(0.0, (started_at - created_at).total_seconds()))
            if first_token_at is not None:
                ttfts.append(max(0.0, (first_token_at - started_at).total_seconds()))
            if completion_tokens and completion_tokens >= 2 and decode_s:  # as Job.tokens_per_s
                speeds.append((completion_tokens - 1) / decode_s)
        window = f"jobs created in the last {settings.METRICS_WINDOW_S} s"
        yield gauge_histogram("llmsite_job_queue_wait_seconds",
                              f"Seconds from submit to the start of the run, {window} that started",
                              waits, QUEUE_WAIT_BUCKETS_S)
        yield gauge_histogram("llmsite_job_time_to_first_token_seconds",
                              f"Seconds from the start of the run to the first token, {window}",
                              ttfts, TTFT_BUCKETS_S)
        yield gauge_histogram("llmsite_job_decode_tokens_per_second",
                              f"Decode speed after the first token, {window} that finished with 2+ tokens",
                              speeds, TOKENS_PER_S_BUCKETS)

    def fleet_metrics(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("llmsite_redis_up", "1 when the queues and the worker registry could be read")
        try:
            depths = queues.depths()
            statuses = registry.live_statuses()
        except Exception as exc:  # a scrape must answer even with Redis down
            logger.warning("metrics: Redis unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        depth = GaugeMetricFamily("llmsite_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
        for name, count in depths.items():
            depth.add_metric([name], count)
        yield depth
        yield from worker_metrics(statuses)


def worker_metrics(statuses: Iterable[dict[str, Any]]) -> Iterator[Metric]:
    """Families from what each live worker published with its heartbeat (fleet.worker.status)."""
    statuses = list(statuses)
    ids = {pk for status in statuses for pk in status.get("resident", [])}
    names = dict(Checkpoint.objects.filter(pk__in=ids).values_list("pk", "name"))
    live = GaugeMetricFamily("llmsite_workers_live", "Workers whose heartbeat is recent")
    live.add_metric([], len(statuses))
    yield live

    labels = ["worker"]
    families = {
        "resident": GaugeMetricFamily("llmsite_worker_resident_checkpoints", "Checkpoints a worker holds resident",
                                      labels=labels),
        "loading": GaugeMetricFamily("llmsite_worker_loading_checkpoints", "Checkpoints a worker is loading",
                                     labels=labels),
        "memory_used_bytes": GaugeMetricFamily("llmsite_worker_memory_used_bytes",
                                               "Memory of a worker's resident checkpoints and caches", labels=labels),
        "memory_budget_bytes": GaugeMetricFamily("llmsite_worker_memory_budget_bytes",
                                                 "A worker's memory budget", labels=labels),
        "running_jobs": GaugeMetricFamily("llmsite_worker_running_jobs", "Jobs a worker is running", labels=labels),
        "loads": CounterMetricFamily("llmsite_worker_checkpoint_loads", "Checkpoint loads since the worker started",
                                     labels=labels),
        "evictions": CounterMetricFamily("llmsite_worker_checkpoint_evictions",
                                         "Checkpoint evictions since the worker started", labels=labels),
    }
    resident = GaugeMetricFamily("llmsite_worker_checkpoint_resident", "1 for each checkpoint a worker holds",
                                 labels=["worker", "checkpoint_id", "checkpoint"])
    for status in statuses:
        worker = status["name"]
        for key, family in families.items():
            value = status.get(key, 0)
            family.add_metric([worker], len(value) if isinstance(value, list) else float(value or 0))
        for pk in status.get("resident", []):
            resident.add_metric([worker, str(pk), names.get(pk, "")], 1)
    yield from families.values()
    yield resident


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(SiteCollector())


def render_metrics(accept: str = "") -> tuple[bytes, str]:
    """The exposition of everything (body, content type): OpenMetrics when the scraper asks for it (Prometheus
    does; gauge histograms are native there), else the Prometheus text format."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


def staff_or_metrics_token(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A Bearer METRICS_TOKEN (when set) or a signed-in staff user. Anyone else without a token is sent to sign
    in; a wrong token or a signed-in non-staff user gets 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            expected = settings.METRICS_TOKEN
            if expected and hmac.compare_digest(token.strip().encode(), expected.encode()):
                return view(request, *args, **kwargs)
            return HttpResponse("Invalid metrics token.\n", status=403, content_type="text/plain")
        if request.user.is_authenticated:
            if request.user.is_staff:
                return view(request, *args, **kwargs)
            return HttpResponse("Staff only.\n", status=403, content_type="text/plain")
        return redirect_to_login(request.get_full_path())

    return wrapped


@never_cache
@require_GET
@staff_or_metrics_token
def metrics_view(request: HttpRequest) -> HttpResponse:
    body, content_type = render_metrics(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
