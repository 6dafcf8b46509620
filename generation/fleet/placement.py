"""Which queue a job goes to, and which worker loads a checkpoint that no worker holds.

Pure decisions over a snapshot of the live workers (no Redis, no Celery), so they can be tested on their own.

Queues: every worker consumes the default queue and its own direct queue (`<hostname>.dq2`, Celery's
worker_direct); a worker that holds a checkpoint (resident, or claimed for a load in progress) also consumes
`checkpoint.<id>`. The web side sends a job to its checkpoint's queue when a live worker holds it, else to the
default queue; the worker that takes a job from there calls `place` to run it, pass it on, or load.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

CHECKPOINT_QUEUE_PREFIX = "checkpoint."
WORKER_QUEUE_SUFFIX = ".dq2"  # celery.utils.nodenames.WORKER_DIRECT_QUEUE_FORMAT

#: A job passed on this many times is run where it lands: the registry may lag, but a job must not circle.
MAX_HOPS = 4


def checkpoint_queue(checkpoint_id: int) -> str:
    return f"{CHECKPOINT_QUEUE_PREFIX}{checkpoint_id}"


def worker_queue(worker_name: str) -> str:
    return f"{worker_name}{WORKER_QUEUE_SUFFIX}"


def checkpoint_id_of_queue(queue: str) -> int | None:
    """The checkpoint id of a `checkpoint.<id>` queue name, else None."""
    if not queue.startswith(CHECKPOINT_QUEUE_PREFIX):
        return None
    rest = queue[len(CHECKPOINT_QUEUE_PREFIX):]
    return int(rest) if rest.isdigit() else None


@dataclass
class WorkerState:
    """What the routing needs to know of one live worker."""

    name: str
    holds: dict[int, int] = field(default_factory=dict)  # checkpoint id -> estimated bytes (resident or loading)
    budget_bytes: int = 0
    running_jobs: int = 0

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - sum(self.holds.values())

    def load_cost(self, need_bytes: int) -> int:
        """Bytes of resident checkpoints this worker would have to evict to load `need_bytes` more."""
        return max(0, need_bytes - self.free_bytes)


def queue_for(*, checkpoint_id: int, workers: Iterable[WorkerState], default_queue: str) -> str:
    """Web side: the checkpoint's queue when a live worker holds it, else the default queue."""
    if any(checkpoint_id in worker.holds for worker in workers):
        return checkpoint_queue(checkpoint_id)
    return default_queue


class Action(Enum):
    RUN = "run"  # this worker holds the checkpoint
    FORWARD = "forward"  # publish the job again on `queue`
    LOAD = "load"  # nobody holds it and this worker is the cheapest place: claim it, then run


@dataclass(frozen=True)
class Decision:
    action: Action
    queue: str = ""


def place(*, checkpoint_id: int, need_bytes: int, me: WorkerState, others: Iterable[WorkerState],
          hops: int = 0) -> Decision:
    """Worker side, for a job this worker took from any queue.

    Run it when this worker holds the checkpoint; pass it to the checkpoint's queue when another live worker
    holds it; otherwise the checkpoint is loaded by the worker that must evict the fewest bytes for it (this
    one on a tie, then the one with fewer running jobs). A job is passed to a cheaper worker only on its first
    hop, and never more than MAX_HOPS times, so a lagging registry cannot make it circle.
    """
    if checkpoint_id in me.holds or hops >= MAX_HOPS:
        return Decision(Action.RUN if checkpoint_id in me.holds else Action.LOAD)
    others = [worker for worker in others if worker.name != me.name]
    if any(checkpoint_id in worker.holds for worker in others):
        return Decision(Action.FORWARD, checkpoint_queue(checkpoint_id))
    if hops == 0:
        best = min([me, *others], key=lambda w: (w.load_cost(need_bytes), w is not me, w.running_jobs, w.name))
        if best is not me:
            return Decision(Action.FORWARD, worker_queue(best.name))
    return Decision(Action.LOAD)
