"""`manage.py runsite` (what `make run` ends with) brings up Redis, a worker and the web server, keeps them up
through a killed worker and a killed Redis (restarts them; jobs go on), and Ctrl-C stops every one of them."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from llmsite import localredis

ROOT = Path(__file__).resolve().parents[2]

SUBMIT = """
from django.contrib.auth import get_user_model
from generation import services
from modelzoo.models import Checkpoint
owner, _ = get_user_model().objects.get_or_create(username="alice")
job = services.job_create(owner=owner, task="qa", prompt={prompt!r}, checkpoint=Checkpoint.default(), max_tokens=16)
print(job.pk)
"""


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def alive(pid: int) -> bool:
    """Running, or stopped but not reaped by anybody (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], object], *, timeout_s: float, what: Callable[[], str],
               interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(interval_s)


class Site:
    """runsite in its own session with its own SQLite database and local Redis; its output in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.web_port, self.redis_port = localredis.free_port(), localredis.free_port()
        self.db = tmp_path / "db.sqlite3"
        self.env = dict(os.environ, DATABASE_URL=f"sqlite:///{self.db}", LLMSITE_VAR_DIR=str(tmp_path),
                        LLMSITE_REDIS_PORT=str(self.redis_port), WORKER_PRELOAD_DEFAULT="false",
                        # A killed worker's job comes back 65 s after its delivery instead of the default 11 min.
                        # Not less: a delivery loads the model (20-30 s on a busy 2-core host) before its run, and
                        # one unacked past the visibility timeout is delivered a second time while it still runs.
                        JOB_TIME_LIMIT_S="60", CELERY_VISIBILITY_TIMEOUT_S="65", CELERY_RESTORE_INTERVAL_S="1")
        self.env.pop("REDIS_URL")  # the embedded default: runsite starts its own Redis
        self.log_path = tmp_path / "runsite.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=self.env, check=True,
                       capture_output=True)
        self.process = subprocess.Popen([sys.executable, "manage.py", "runsite", "--port", str(self.web_port)],
                                        cwd=ROOT, env=self.env, stdout=self.log_path.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text()

    def tail(self) -> str:
        return self.log()[-4000:]

    def pids(self, name: str) -> list[int]:
        """Every process runsite started for `name`, in order (from its "started NAME (pid N)" lines)."""
        return [int(pid) for pid in re.findall(rf"started {name} \(pid (\d+)\)", self.log())]

    def healthz(self) -> tuple[int, dict]:
        return get_json(f"http://127.0.0.1:{self.web_port}/healthz")

    def healthy(self) -> bool:
        try:
            status, body = self.healthz()
        except OSError:
            return False
        return status == 200 and body["workers"]["count"] == 1

    def submit(self, prompt: str) -> int:
        done = subprocess.run([sys.executable, "manage.py", "shell", "-c", SUBMIT.format(prompt=prompt)], cwd=ROOT,
                              env=self.env, check=True, capture_output=True, text=True)
        return int(done.stdout.split()[-1])

    def job(self, job_id: int) -> dict:
        with sqlite3.connect(self.db) as connection:
            connection.row_factory = sqlite3.Row
            row = connection.execute("SELECT status, attempts, output, error FROM generation_job WHERE id = ?",
                                     (job_id,)).fetchone()
        return dict(row)


def test_it_keeps_the_site_up_through_a_killed_worker_and_redis_and_stops_everything_on_ctrl_c(tmp_path: Path):
    site = Site(tmp_path)
    site.start()
    try:
        wait_until(site.healthy, timeout_s=120, what=site.tail)
        assert localredis.is_up(f"redis://127.0.0.1:{site.redis_port}/0")

        # kill -9 the worker in the middle of a job: claimed (running, not acked), loading the model.
        job_id = site.submit("What is the capital of France?")
        wait_until(lambda: site.job(job_id)["status"] == "running", timeout_s=60, what=site.tail, interval_s=0.1)
        (worker_pid,) = site.pids("worker")
        os.kill(worker_pid, signal.SIGKILL)
        status, body = site.healthz()  # the web answers meanwhile, and says what is down
        assert status == 503 and body["workers"]["ok"] is False and body["redis"]["ok"], body
        wait_until(lambda: len(site.pids("worker")) == 2, timeout_s=30, what=site.tail)
        assert f"worker (pid {worker_pid}) exited: killed by SIGKILL after" in site.log()
        assert re.search(rf"worker \(pid {worker_pid}\) exited: .* restarting in 1 s", site.log())
        wait_until(site.healthy, timeout_s=120, what=site.tail)

        # The killed job is delivered again (acks_late) and succeeds once; a new job succeeds too.
        wait_until(lambda: site.job(job_id)["status"] not in ("queued", "running"), timeout_s=180, what=site.tail)
        job = site.job(job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 2), (job, site.tail())
        assert job["output"].strip()
        new_id = site.submit("What colour is the sky?")
        wait_until(lambda: site.job(new_id)["status"] not in ("queued", "running"), timeout_s=60, what=site.tail)
        assert (site.job(new_id)["status"], site.job(new_id)["attempts"]) == ("succeeded", 1), site.tail()

        # kill -9 the local Redis: runsite starts it again on the same port and the site recovers.
        (redis_pid,) = site.pids("redis")
        os.kill(redis_pid, signal.SIGKILL)
        status, body = site.healthz()
        assert status == 503 and body["redis"]["ok"] is False, body
        wait_until(lambda: len(site.pids("redis")) == 2, timeout_s=30, what=site.tail)
        assert f"redis (pid {redis_pid}) exited: killed by SIGKILL" in site.log()
        wait_until(site.healthy, timeout_s=120, what=site.tail)

        os.killpg(site.process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        site.process.wait(timeout=60)
    finally:
        if site.process.poll() is None:
            os.killpg(site.process.pid, signal.SIGKILL)
            site.process.wait()
    assert site.process.returncode == 0, site.tail()
    output = site.log()
    assert f"http://127.0.0.1:{site.web_port}/" in output
    children = site.pids("redis") + site.pids("worker") + site.pids("web")
    assert len(children) == 5
    assert not [pid for pid in children if alive(pid)], site.tail()
    assert not localredis.is_up(f"redis://127.0.0.1:{site.redis_port}/0")
    assert output.index("stopping web") < output.index("stopping worker") < output.index("stopping redis")
