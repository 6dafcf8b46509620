"""`manage.py runsite`: the whole site on one machine — Redis, one Celery worker and the web server.

Redis comes from `REDIS_URL` when it is set; otherwise a local one is started on `LLMSITE_REDIS_PORT`
(files under `var/redis/`). Ctrl-C (or SIGTERM) stops every child.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from llmsite import localredis


class Command(BaseCommand):
    help = "Run Redis (unless REDIS_URL is set), one Celery worker and the web server until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("LLMSITE_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("LLMSITE_PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=1, help="web server processes")
        parser.add_argument(
            "--concurrency", type=int, default=settings.WORKER_CONCURRENCY,
            help="jobs one worker runs at once (they share the resident model's batch)",
        )

    def handle(self, *args, host: str, port: int, web_workers: int, concurrency: int, **options) -> None:
        children: list[subprocess.Popen] = []
        stopping = False

        def request_stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        # Ctrl-C reaches the children too (same process group); we only stop watching and clean up.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            env = dict(os.environ, REDIS_URL=self._redis_url(children))
            children.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "llmsite", "worker", "--pool", "threads",
                 "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                env=env,
            ))
            children.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "llmsite.asgi:application", "--host", host, "--port", str(port),
                 "--workers", str(web_workers), "--no-access-log", "--lifespan", "off"],
                env=env,
            ))
            self.stdout.write(self.style.SUCCESS(f"llmsite is starting at http://{host}:{port}/  (Ctrl-C stops it)"))
            self.stdout.write("First admin: .venv/bin/python manage.py createsuperuser, then sign in at /admin/")
            while not stopping:
                for child in children:
                    if child.poll() is not None and not stopping:
                        raise CommandError(f"{' '.join(child.args[:5])} exited with {child.returncode}")
                time.sleep(0.5)
        finally:
            self.stdout.write("Stopping…")
            for child in reversed(children):
                localredis.stop(child)

    def _redis_url(self, children: list[subprocess.Popen]) -> str:
        """REDIS_URL when set (it must answer); else the local Redis, started here if it is not up yet."""
        url = os.environ.get("REDIS_URL")
        if url:
            if not localredis.is_up(url):
                raise CommandError(f"REDIS_URL={url} does not answer PING")
            return url
        url = settings.REDIS_URL
        if not localredis.is_up(url):
            port = settings.LOCAL_REDIS_PORT
            data_dir = Path(settings.VAR_DIR) / "redis"
            self.stdout.write(f"Starting Redis ({localredis.redis_server_binary()}) on port {port}")
            children.append(localredis.start_redis(port=port, data_dir=data_dir))
        return url
