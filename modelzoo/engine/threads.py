"""Keep torch's OpenMP work on as few threads as possible.

libgomp keeps an OpenMP team for every thread that has run a parallel region, for as
long as that thread lives. Once the threads it manages outnumber the CPUs, every team
switches to very short spin-waits and sleeps between parallel regions, and each of the
hundreds of small matmuls in a decode step pays a wake-up: measured on 2 CPUs, a float16
decode step on the engine thread took 21 ms after the checkpoint had been loaded on the
main thread, and 12 ms when the load ran in a thread that had ended. So heavy one-off
work (loading, merging an adapter) runs in a throwaway thread, and the engine
thread is the only long-lived thread that computes.
"""

from __future__ import annotations

import functools
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
