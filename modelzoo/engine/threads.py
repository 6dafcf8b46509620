"""Keep torch's OpenMP work on as few threads as possible.

libgomp keeps an OpenMP team for every thread that has run a parallel region, for as
long as that thread lives. Once the threads it manages outnumber the CPUs, every team
switches to very short spin-waits and sleeps between parallel regions, and each of the
hundreds of small matmuls in a decode step pays a wake-up: measured on 2 CPUs, a float16
decode step on the engine thread took 21 ms after the checkpoint had been loaded on the
main thread, and 12 ms when the load ran in a thread that had ended. So heavy one-off
work (loading, merging an adapter) runs in a throwaway thread, and the engine
thread is the only long-lived thread that computes.

How many threads torch computes with is a policy (choose_threads, a pure function) because
the host is never quiet: the web server, Redis and other workers share its cores, and an
OpenMP team of 2 threads on 2 cores with one busy neighbour waits at every barrier for
the thread that lost its core (a decode step ~16x slower), while one thread only shares
its core and slows down about twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def in_throwaway_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate fn so each call runs in a new thread that ends with the call (errors re-raised)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=fn.__name__) as executor:
            return executor.submit(fn, *args, **kwargs).result()

    return wrapper


#: Set (to 1) by `manage.py runsite` style deployments where the web server and Redis run on the engine's host.
SHARED_HOST_ENV = "LLMSITE_SHARED_HOST"


def choose_threads(cores: int, *, configured: int = 0, shared_host: bool = False, load: float = 0.0) -> int:
    """The torch thread count for an engine on a host with `cores` CPUs.

    `configured` > 0 (ENGINE_THREADS) wins. Otherwise one core is left to the neighbours when the web server
    runs on the same host (`shared_host`), and so is every core that other work keeps busy at least half the
    time (`load`: cores' worth of other work, e.g. the load average before we start, or what HostCpu measures
    while we run); never fewer than 1 thread."""
    if configured > 0:
        return configured
    cores = max(1, cores)
    free = cores - (1 if shared_host else 0)
    free = min(free, cores - int(max(0.0, load) + 0.5))
    return max(1, free)


#: How much lower than the serving engine background work runs (validating an upload, finetuning).
BACKGROUND_NICENESS = 10


def run_in_background() -> None:
    """Lower the calling thread (Linux keeps a niceness per thread; threads it starts inherit it) to
    BACKGROUND_NICENESS, so that on a shared host it computes with what the engines leave rather than taking
    cores from a worker that is answering users."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), BACKGROUND_NICENESS))


def host_cores() -> int:
    """The CPUs this process may run on."""
    return len(_affinity())


def shared_host() -> bool:
    return os.environ.get(SHARED_HOST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def host_threads(configured: int = 0) -> int:
    """choose_threads for this host now: its cores, LLMSITE_SHARED_HOST and its 1-minute load average."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return choose_threads(host_cores(), configured=configured, shared_host=shared_host(), load=load)


class HostCpu:
    """How many cores' worth of CPU other processes used since the last reading: the busy time of the CPUs
    this process may run on (their lines in /proc/stat, steal included: a neighbour VM is a neighbour too)
    minus this process's own CPU time, over the wall time between readings. Only our CPUs count, so work
    elsewhere on a big host (other containers' cpusets) is nobody's business here. Linux only; elsewhere
    `others()` is None."""

    def __init__(self, stat_path: str = "/proc/stat", cpus: set[int] | None = None) -> None:
        self.stat_path = stat_path
        self.cpus = {f"cpu{n}" for n in (cpus if cpus is not None else _affinity())}
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        busy_ticks = 0
        try:
            with open(self.stat_path) as f:
                for line in f:
                    name, *values = line.split()
                    if name in self.cpus:  # user nice system idle iowait irq softirq steal ...
                        fields = [int(v) for v in values[:8]]
                        busy_ticks += sum(fields) - fields[3] - fields[4]
        except (OSError, ValueError):
            return None
        own = os.times()
        return time.monotonic(), busy_ticks / self._tick, own.user + own.system

    def others(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


class ThreadGovernor:
    """choose_threads, applied again every `interval_s` while the engine runs, with the load measured now.

    A neighbour that starts after the engine (another worker, a batch job, the web server under a burst)
    would otherwise meet a team sized for a quiet host: 2 threads on 2 cores beside one busy process made a
    decode step ~16x slower, 1 thread only ~2x. Called from the engine thread, between steps, so torch's
    thread count changes for the thread that computes. With ENGINE_THREADS set it never changes anything."""

    def __init__(
        self, configured: int = 0, *, cores: int | None = None, shared: bool | None = None,
        measure: Callable[[], float | None] | None = None, interval_s: float = 1.0,
    ) -> None:
        self.configured = configured
        self.cores = cores or host_cores()
        self.shared = shared_host() if shared is None else shared
        self.measure = measure or HostCpu().others
        self.interval_s = interval_s
        self._next = time.monotonic() + interval_s
        self.threads: int | None = configured or None  #: the count last applied (None until start() or a change)

    def start(self) -> int:
        """Apply the count for a host with no other work (or ENGINE_THREADS) and return it: the load average
        is a minute's history, our own loading included, and the first tick measures the host as it is."""
        import torch

        self.threads = self.threads_for(0.0)
        torch.set_num_threads(self.threads)
        return self.threads

    def threads_for(self, others: float) -> int:
        return choose_threads(self.cores, configured=self.configured, shared_host=self.shared, load=others)

    def tick(self) -> int | None:
        """Every interval_s: measure, decide, and apply; returns the thread count when it changed."""
        if self.configured > 0 or time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.interval_s
        others = self.measure()
        if others is None:
            return None
        import torch

        n = self.threads_for(others)
        if n == torch.get_num_threads():
            return None
        log.info("other work keeps %.1f cores busy: computing with %d threads", others, n)
        torch.set_num_threads(n)
        self.threads = n
        return n
