"""pytest plugin: every test run gets its own real Redis, and tests that need one get a real Celery worker.

Loaded with `-p tests.live_services` (see pytest.ini) so that `REDIS_URL` is set before Django reads its
settings. The Redis is started on a free port under `var/test-redis/` and stopped when the run ends; a
`REDIS_URL` of the environment is never used by tests.

Consecutive tests that ask for `worker` (or `web`) share one process: starting a worker and loading the model
costs ~15 s, the site under uvicorn a few seconds. Each test still finds the worker idle, with the model resident
and an empty queue, and Redis holding nothing of an earlier test but the worker's own entries; a test that does
not ask for one runs with none (`only_requested_processes`), so a test that starts its own workers or needs
nobody to take its jobs is not disturbed.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmsite import localredis

ROOT = Path(__file__).resolve().parent.parent
# Logs and the test Redis live under LLMSITE_VAR_DIR when set, so two checkouts or runs do not share them.
VAR = Path(os.environ.get("LLMSITE_VAR_DIR") or ROOT / "var")

_port = localredis.free_port()
os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_port}/0"
# A short job time limit and a visibility timeout just above it, so a job whose worker was killed is
# redelivered within seconds in the tests instead of after the production default.
os.environ.setdefault("JOB_TIME_LIMIT_S", "60")
os.environ.setdefault("CELERY_VISIBILITY_TIMEOUT_S", "65")
os.environ.setdefault("CELERY_RESTORE_INTERVAL_S", "1")
os.environ["CHECKPOINT_DIR"] = str(VAR / "test-checkpoints")  # uploads made by tests stay out of the real store
# Playwright's sync API runs an event loop in the test thread; the ORM calls of the tests are still sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
# The stream tests open many streams of one user (50 readers of one job); the cap itself is tested at this value.
os.environ.setdefault("STREAMS_PER_USER", "60")

_redis: subprocess.Popen | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _redis
    if _redis is None and not hasattr(config, "workerinput"):
        _redis = localredis.start_redis(port=_port, data_dir=VAR / "test-redis", persistent=False)


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_shared_worker()
    _stop_shared_web()
    if _redis is not None:
        localredis.stop(_redis)


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL for a child process that points at the database the tests are using now."""
    engine, name = settings_dict["ENGINE"], settings_dict["NAME"]
    if engine.endswith("sqlite3"):
        if str(name).startswith(":memory:") or "mode=memory" in str(name):
            raise RuntimeError("a worker process cannot share an in-memory SQLite test database")
        return f"sqlite:///{Path(name).resolve()}"
    user, password = settings_dict.get("USER") or "", settings_dict.get("PASSWORD") or ""
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "localhost"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{name}"


class WorkerProcess:
    """A real `celery worker` child process with the bundled model, against the test database and Redis."""

    def __init__(self, database: str, *, name: str, env: dict[str, str] | None = None) -> None:
        self.database, self.name, self.extra_env = database, name, env or {}
        self.log_path = VAR / f"test-{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, *, timeout_s: float = 120.0) -> None:
        VAR.mkdir(exist_ok=True)
        self.log_path.write_text("")
        env = dict(os.environ, DATABASE_URL=self.database, **self.extra_env)
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "llmsite", "worker", "--pool", "threads", "--concurrency", "4",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"{self.name}@%h"],
            cwd=ROOT, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while "ready." not in self.log_path.read_text():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in {timeout_s}s:\n{self.log_path.read_text()}")
            time.sleep(0.2)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to ack, requeue or clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, *, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after grace_s: a worker stopped while it still loads its model would finish
        the load first (~10 s a test), and no test needs that wait (each starts with an empty queue)."""
        if self.process is not None:
            localredis.stop(self.process, timeout_s=grace_s)

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def node(self) -> str:
        """Its Celery node name (`-n NAME@%h`)."""
        return f"{self.name}@{socket.gethostname()}"

    def settle(self, *, timeout_s: float = 30.0) -> bool:
        """Drop the messages still queued and wait until the worker runs and holds none (Celery's own answer to
        `inspect active` and `inspect reserved`, not a guess from its log). False when it is not idle in time."""
        from llmsite.celery import app

        if not self.alive:
            return False
        client = _redis_client()
        for key in client.scan_iter(count=1000):
            if client.type(key) == b"list":  # the Celery queues (celery, checkpoint.<id>, priorities)
                client.delete(key)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive:
            inspect = app.control.inspect(destination=[self.node], timeout=2.0)
            active, reserved = inspect.active(), inspect.reserved()
            if active is not None and reserved is not None and active.get(self.node) == [] \
                    and reserved.get(self.node) == []:
                return True
            time.sleep(0.2)
        return False

    def forget_other_tests(self) -> None:
        """Empty the test Redis but for this worker's own entries (its heartbeat, what it holds and publishes) and
        the queues' bindings: no queue, stream, key or other worker of an earlier test is left, and the worker is
        live at once instead of after its next heartbeat (which a flush would mean)."""
        from generation.fleet import registry

        client = _redis_client()
        mine = f"llmsite:worker:{self.node}:"
        for key in client.scan_iter(count=1000):
            text = key.decode(errors="replace")
            if text.startswith(("_kombu.binding.", mine)) or text == registry.WORKERS_KEY:
                continue
            client.delete(key)
        others = [name for name in client.zrange(registry.WORKERS_KEY, 0, -1) if name.decode() != self.node]
        if others:
            client.zrem(registry.WORKERS_KEY, *others)


def _redis_client():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


_shared_worker: WorkerProcess | None = None
_shared_web: WebProcess | None = None


def _stop_shared_worker() -> None:
    global _shared_worker
    if _shared_worker is not None:
        _shared_worker.stop()
        _shared_worker = None


def _stop_shared_web() -> None:
    global _shared_web
    if _shared_web is not None:
        _shared_web.stop()
        _shared_web = None


@pytest.fixture(scope="session")
def shared_processes(django_db_setup) -> Iterator[None]:
    """Stops the shared worker and site before the test database is dropped (PostgreSQL refuses to drop a
    database that other sessions are connected to)."""
    yield
    _stop_shared_worker()
    _stop_shared_web()


@pytest.fixture(autouse=True)
def only_requested_processes(request: pytest.FixtureRequest) -> None:
    """A test that does not ask for the shared worker (or site) runs without it: none of its jobs is taken by a
    worker it did not start, and the processes it starts itself are the only ones."""
    if "worker" not in request.fixturenames:
        _stop_shared_worker()
    if "web" not in request.fixturenames:
        _stop_shared_web()


@pytest.fixture
def worker(transactional_db, shared_processes) -> Iterator[WorkerProcess]:
    """A real worker (`worker1`, the default checkpoint preloaded) against an empty queue, so that no other
    test's messages reach it and it takes none of theirs. Consecutive tests that ask for it share one process:
    after a test its queues are emptied and it must be idle within 30 s (else it is stopped, and the next test
    starts a new one), and before the next test Redis is emptied but for the worker's own entries. The bundled
    checkpoint keeps its id across tests (tests/conftest.py), so the model it preloaded stays the one jobs use."""
    global _shared_worker
    from django.db import connection

    database = database_url(connection.settings_dict)
    process = _shared_worker
    if process is not None and process.alive and process.database == database:
        process.forget_other_tests()
    else:
        _stop_shared_worker()
        _redis_client().flushdb()
        process = WorkerProcess(database, name="worker1")
        process.start()
        _shared_worker = process
    yield process
    if _shared_worker is process and not process.settle():
        _stop_shared_worker()


class WebProcess:
    """The site under uvicorn (ASGI, like `manage.py runsite`) in a child process on a free port, against the
    test database: what the async streaming views need (pytest-django's live_server is a WSGI thread)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.port = localredis.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = VAR / "test-web.log"
        self.process: subprocess.Popen | None = None

    def start(self, *, timeout_s: float = 60.0) -> None:
        import urllib.request

        VAR.mkdir(exist_ok=True)
        env = dict(os.environ, DATABASE_URL=self.database)
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "llmsite.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--lifespan", "off"],
            cwd=ROOT, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=2).read()
                return
            except Exception as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"web server did not start:\n{self.log_path.read_text()}") from exc
                time.sleep(0.2)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            localredis.stop(self.process, timeout_s=10)


@pytest.fixture
def web(transactional_db, shared_processes) -> WebProcess:
    """The site under uvicorn, shared by consecutive tests that ask for it (it keeps no state of its own: the
    database and Redis hold it all)."""
    global _shared_web
    from django.db import connection

    database = database_url(connection.settings_dict)
    if _shared_web is None or not _shared_web.alive or _shared_web.database != database:
        _stop_shared_web()
        _shared_web = WebProcess(database)
        _shared_web.start()
    return _shared_web
