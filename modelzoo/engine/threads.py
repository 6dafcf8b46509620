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

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

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
    runs on the same host (`shared_host`), and the cores the measured `load` (the 1-minute load average,
    other work already running) keeps busy are left too; never fewer than 1 thread."""
    if configured > 0:
        return configured
    cores = max(1, cores)
    free = cores - (1 if shared_host else 0)
    free = min(free, cores - int(max(0.0, load)))
    return max(1, free)


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_threads(configured: int = 0) -> int:
    """choose_threads for this host now: its cores, LLMSITE_SHARED_HOST and its 1-minute load average."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    shared = os.environ.get(SHARED_HOST_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return choose_threads(host_cores(), configured=configured, shared_host=shared, load=load)


def set_torch_threads(configured: int = 0) -> int:
    """Apply host_threads(configured) to torch (process-wide) and return it."""
    import torch

    n = host_threads(configured)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
