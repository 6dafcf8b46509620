"""`manage.py runsite`: the whole site on one machine — Redis, one Celery worker and the web server — kept up.

Redis comes from `REDIS_URL` when it is set (runsite only watches it and logs when it stops or starts
answering); otherwise a local one runs on `LLMSITE_REDIS_PORT` (files under `var/redis/`). A child that dies
(the worker, the web server, the local Redis) is restarted with a backoff (llmsite.supervisor); the web keeps
answering meanwhile and /healthz says what is down. Only Ctrl-C or SIGTERM stops everything: the web server,
then the worker, Redis last; runsite then exits 0.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand

from llmsite import localredis
from llmsite.supervisor import ChildSpec, Supervisor

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run Redis (unless REDIS_URL is set), one Celery worker and the web server, restarting any that dies, " \
           "until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("LLMSITE_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("LLMSITE_PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=1, help="web server processes")
        parser.add_argument(
            "--concurrency", type=int, default=settings.WORKER_CONCURRENCY,
            help="jobs one worker runs at once (they share the resident model's batch)",
        )

    def handle(self, *args, host: str, port: int, web_workers: int, concurrency: int, **options) -> None:
        external_url = os.environ.get("REDIS_URL")
        url = external_url or settings.REDIS_URL
        specs = [] if external_url else self._local_redis(url)
        # The web server and Redis share this host with the worker: its engine takes a thread fewer (ENGINE_THREADS).
        env = dict(os.environ, REDIS_URL=url, LLMSITE_SHARED_HOST=os.environ.get("LLMSITE_SHARED_HOST", "1"))
        specs.append(ChildSpec("worker", [
            sys.executable, "-m", "celery", "-A", "llmsite", "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ], env))
        specs.append(ChildSpec("web", [
            sys.executable, "-m", "uvicorn", "llmsite.asgi:application", "--host", host, "--port", str(port),
            "--workers", str(web_workers), "--no-access-log", "--lifespan", "off",
        ], env))
        supervisor = Supervisor(specs)
        # Only runsite gets the terminal's Ctrl-C (each child has its own session); it stops the children itself.
        signal.signal(signal.SIGINT, lambda signum, frame: supervisor.request_stop())
        signal.signal(signal.SIGTERM, lambda signum, frame: supervisor.request_stop())
        watch = ExternalRedisWatch(url) if external_url else None
        self.stdout.write(self.style.SUCCESS(f"llmsite is starting at http://{host}:{port}/  (Ctrl-C stops it)"))
        self.stdout.write("First admin: .venv/bin/python manage.py createsuperuser, then sign in at /admin/")
        try:
            supervisor.run(on_tick=watch)
        finally:
            self.stdout.write("Stopping…")
            supervisor.stop()

    def _local_redis(self, url: str) -> list[ChildSpec]:
        """The local Redis to supervise; none when one already answers on its port (left from an earlier run,
        or another runsite's: it is used, not owned, so it is neither restarted nor stopped here)."""
        if localredis.is_up(url):
            logger.warning("A Redis already answers at %s: using it; runsite will not restart or stop it", url)
            return []
        data_dir = Path(settings.VAR_DIR) / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        command = localredis.redis_command(port=settings.LOCAL_REDIS_PORT, data_dir=data_dir)
        return [ChildSpec("redis", command, ready=lambda: localredis.is_up(url))]


class ExternalRedisWatch:
    """Called every tick of the supervisor's loop: checks the external Redis every `interval_s` and logs when it
    stops or starts answering. runsite does not own it, so it never starts or restarts it."""

    def __init__(self, url: str, *, interval_s: float = 5.0) -> None:
        self.url, self.interval_s = url, interval_s
        parts = urlsplit(url)
        self.shown = parts._replace(netloc=f"{parts.hostname}:{parts.port or 6379}").geturl()  # no password
        self.next_check, self.up = 0.0, None

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.interval_s
        up = localredis.is_up(self.url)
        if not up and self.up is not False:
            logger.error("REDIS_URL=%s does not answer PING; jobs wait until it does (runsite does not manage it)",
                         self.shown)
        elif up and self.up is False:
            logger.warning("REDIS_URL=%s answers again", self.shown)
        self.up = up
