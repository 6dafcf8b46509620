"""The supervisor behind `manage.py runsite`: its backoff, and restarts and stops of real (tiny) child processes
under a clock the test moves."""
import logging
import os
import signal

import pytest

from llmsite.supervisor import Backoff, ChildSpec, Supervisor, describe_exit

SLEEP = ["sleep", "60"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_it_doubles_the_delay_up_to_the_maximum_and_resets_it_after_a_long_run():
    backoff = Backoff(initial_s=1, maximum_s=30, reset_after_s=60)
    delays, previous = [], None
    for _ in range(7):
        previous = backoff.next_delay(previous_s=previous, uptime_s=2)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(previous_s=30, uptime_s=59.9) == 30
    assert backoff.next_delay(previous_s=30, uptime_s=60) == 1


def test_it_describes_exits_by_status_or_signal():
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_it_restarts_a_killed_child_after_the_delay_and_logs_it(clock, caplog):
    caplog.set_level(logging.INFO, logger="llmsite.supervisor")
    supervisor = Supervisor([ChildSpec("redis", SLEEP), ChildSpec("worker", SLEEP)], clock=clock)
    try:
        supervisor.start()
        redis, worker = supervisor.children
        assert os.getsid(worker.process.pid) == worker.process.pid  # its own session: no terminal Ctrl-C
        first_pid = worker.process.pid

        clock.now += 5
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        supervisor.poll()
        assert f"worker (pid {first_pid}) exited: killed by SIGKILL after 5.0 s; restarting in 1 s" in caplog.text

        clock.now += 0.5
        supervisor.poll()
        assert worker.process.pid == first_pid  # still waiting

        clock.now += 0.5
        supervisor.poll()
        assert worker.process.pid != first_pid and worker.process.poll() is None
        assert worker.pids == [first_pid, worker.process.pid]
        assert redis.pids == [redis.process.pid]  # the others are left alone
    finally:
        supervisor.stop()
    assert all(gone(pid) for child in supervisor.children for pid in child.pids)


def test_it_backs_off_a_child_that_keeps_exiting_even_with_status_0(clock, caplog):
    supervisor = Supervisor([ChildSpec("web", ["true"])], clock=clock)
    (web,) = supervisor.children
    delays = []
    try:
        supervisor.start()
        for _ in range(4):
            web.process.wait()
            supervisor.poll()  # notices the exit
            delays.append(web.delay_s)
            clock.now += web.delay_s
            supervisor.poll()  # restarts it
    finally:
        supervisor.stop()
    assert delays == [1, 2, 4, 8]
    assert "exit status 0" in caplog.text
    assert len(web.pids) == 5


def test_it_stops_children_last_started_first_and_kills_one_that_ignores_sigterm(clock, caplog):
    caplog.set_level(logging.INFO, logger="llmsite.supervisor")
    stubborn = ["sh", "-c", "trap '' TERM; sleep 60 & wait"]
    supervisor = Supervisor([ChildSpec("redis", SLEEP), ChildSpec("worker", stubborn, stop_timeout_s=0.3),
                             ChildSpec("web", SLEEP)], clock=clock)
    supervisor.start()
    supervisor.stop()

    stops = [record.getMessage().split()[1] for record in caplog.records if record.getMessage().startswith("stopping")]
    assert stops == ["web", "worker", "redis"]
    assert "worker did not stop in 0.3 s; killing it" in caplog.text
    assert all(child.process.returncode is not None for child in supervisor.children)
    assert all(gone(pid) for child in supervisor.children for pid in child.pids)


def test_it_kills_a_child_that_does_not_become_ready_and_restarts_it_later(clock, caplog):
    supervisor = Supervisor([ChildSpec("redis", SLEEP, ready=lambda: False, ready_timeout_s=0.2)], clock=clock)
    (redis,) = supervisor.children
    try:
        supervisor.start()
        assert redis.process.returncode == -signal.SIGKILL
        assert "redis (pid" in caplog.text and "not ready in 0.2 s" in caplog.text
        supervisor.poll()
        assert redis.restart_at == clock.now + 1
    finally:
        supervisor.stop()
