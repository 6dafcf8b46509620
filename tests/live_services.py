"""pytest plugin: every test run gets its own real Redis, and tests that need one get a real Celery worker.

Loaded with `-p tests.live_services` (see pytest.ini) so that `REDIS_URL` is set before Django reads its
settings. The Redis is started on a free port under `var/test-redis/` and stopped when the run ends; a
`REDIS_URL` of the environment is never used by tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
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


@pytest.fixture
def worker(transactional_db) -> WorkerProcess:
    """A real worker for one test, started against an empty queue and stopped after the test, so that no
    other test's messages reach it and it takes none of theirs."""
    import redis
    from django.db import connection

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    process = WorkerProcess(database_url(connection.settings_dict), name="worker1")
    process.start()
    yield process
    process.stop()


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

    def stop(self) -> None:
        if self.process is not None:
            localredis.stop(self.process, timeout_s=10)


@pytest.fixture
def web(transactional_db) -> WebProcess:
    from django.db import connection

    process = WebProcess(database_url(connection.settings_dict))
    process.start()
    yield process
    process.stop()
