"""Keep child processes up: start them in order, restart one that dies after a backoff, stop them in reverse.

What `manage.py runsite` runs its local Redis, worker and web server under. Pure Python (no Django): a list of
named `ChildSpec`s and a poll loop. A child that exits for any reason while the supervisor is not stopping is
started again after `Backoff.next_delay`: 1 s, doubling up to 30 s, back to 1 s once it had stayed up a minute.
Each child runs in its own session, so a Ctrl-C in the terminal reaches only the supervisor, which then stops
the children itself, last started first (Redis, listed first, goes last, once nothing uses it). On Linux a
child also gets SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG), so none is left behind even then.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    maximum_s: float = 30.0
    #: A child that stayed up this long had recovered: its next restart waits `initial_s` again.
    reset_after_s: float = 60.0

    def next_delay(self, *, previous_s: float | None, uptime_s: float) -> float:
        """The wait before restarting a child that ran `uptime_s`; `previous_s` is the wait before its last
        restart (None when it has not been restarted yet)."""
        if previous_s is None or uptime_s >= self.reset_after_s:
            return self.initial_s
        return min(previous_s * 2, self.maximum_s)


@dataclass
class ChildSpec:
    name: str
    command: list[str]
    env: dict[str, str] | None = None
    #: Answers True once the child serves (Redis: PING); awaited after every start before the next child starts.
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 10.0
    #: After SIGTERM, how long the child may take to go before it is killed.
    stop_timeout_s: float = 10.0


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    delay_s: float | None = None  # the wait before its latest restart
    restart_at: float | None = None  # set while it is down and waiting
    pids: list[int] = field(default_factory=list)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None  # looked up before any fork
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Run in the child between fork and exec: SIGTERM it when the supervisor's thread that started it ends."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, specs: list[ChildSpec], *, backoff: Backoff = Backoff(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.backoff, self.clock = backoff, clock
        self.stopping = False

    def request_stop(self) -> None:
        """Safe to call from a signal handler: the loop ends at its next tick."""
        self.stopping = True

    def run(self, *, interval_s: float = 0.25, on_tick: Callable[[], None] | None = None) -> None:
        """Start every child, then keep them up until `request_stop`. The caller stops them (`stop`), in a
        `finally`, so that an error here leaves nothing behind either."""
        self.start()
        while not self.stopping:
            self.poll()
            if on_tick is not None:
                on_tick()
            time.sleep(interval_s)

    def start(self) -> None:
        for child in self.children:
            if self.stopping:
                return
            self._spawn(child)

    def poll(self) -> None:
        """Notice children that exited and restart those whose wait is over."""
        now = self.clock()
        for child in self.children:
            if self.stopping:
                return
            if child.restart_at is None and child.process is not None and child.process.poll() is not None:
                _signal_group(child.process, signal.SIGKILL)  # what it started in its group must not linger
                uptime = now - child.started_at
                child.delay_s = self.backoff.next_delay(previous_s=child.delay_s, uptime_s=uptime)
                child.restart_at = now + child.delay_s
                logger.warning("%s (pid %s) exited: %s after %.1f s; restarting in %g s", child.spec.name,
                               child.process.pid, describe_exit(child.process.returncode), uptime, child.delay_s)
            elif child.restart_at is not None and now >= child.restart_at:
                try:
                    self._spawn(child)
                except OSError as exc:  # e.g. the binary went away: try again later, like any other exit
                    child.delay_s = self.backoff.next_delay(previous_s=child.delay_s, uptime_s=0.0)
                    child.restart_at = now + child.delay_s
                    logger.error("%s could not start (%s); retrying in %g s", child.spec.name, exc, child.delay_s)

    def stop(self) -> None:
        """Stop every child, last started first: SIGTERM to its process group, SIGKILL after its timeout."""
        self.stopping = True
        for child in reversed(self.children):
            process = child.process
            if process is None or process.poll() is not None:
                continue
            logger.info("stopping %s (pid %s)", child.spec.name, process.pid)
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=child.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %g s; killing it", child.spec.name, child.spec.stop_timeout_s)
                _signal_group(process, signal.SIGKILL)
                process.wait()
            # Whatever it started in its group (uvicorn's worker processes) goes with it.
            _signal_group(process, signal.SIGKILL)

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.process = subprocess.Popen(
            spec.command, env=spec.env, start_new_session=True,
            preexec_fn=_die_with_parent if _prctl is not None else None,
        )
        child.started_at, child.restart_at = self.clock(), None
        child.pids.append(child.process.pid)
        logger.info("started %s (pid %s)", spec.name, child.process.pid)
        if spec.ready is not None:
            self._await_ready(child)

    def _await_ready(self, child: _Child) -> None:
        spec, process = child.spec, child.process
        deadline = time.monotonic() + spec.ready_timeout_s
        while not spec.ready():
            if process.poll() is not None or self.stopping:
                return  # poll() restarts it; stop() ends it
            if time.monotonic() > deadline:
                logger.error("%s (pid %s) not ready in %g s; killing it", spec.name, process.pid, spec.ready_timeout_s)
                _signal_group(process, signal.SIGKILL)
                process.wait()
                return
            time.sleep(0.05)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # its own session: the group id is its pid
    except ProcessLookupError:
        pass
