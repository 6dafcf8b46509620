"""`manage.py runsite` (what `make run` ends with) brings up Redis, a worker and the web server, and Ctrl-C
stops every one of them."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llmsite import localredis

ROOT = Path(__file__).resolve().parents[2]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_it_serves_the_site_with_its_own_redis_and_stops_everything_on_ctrl_c(tmp_path: Path):
    web_port, redis_port = localredis.free_port(), localredis.free_port()
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", LLMSITE_VAR_DIR=str(tmp_path),
               LLMSITE_REDIS_PORT=str(redis_port), WORKER_PRELOAD_DEFAULT="false")
    env.pop("REDIS_URL")  # the embedded default: runsite starts its own Redis
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    site = subprocess.Popen([sys.executable, "manage.py", "runsite", "--port", str(web_port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        status, body = 0, {}
        while time.monotonic() < deadline and status != 200:
            time.sleep(1)
            try:
                status, body = get_json(f"http://127.0.0.1:{web_port}/healthz")
            except OSError:
                continue
        assert status == 200, body
        assert body["redis"]["ok"] and body["workers"]["count"] == 1
        assert localredis.is_up(f"redis://127.0.0.1:{redis_port}/0")

        os.killpg(site.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        output, _ = site.communicate(timeout=60)
    finally:
        if site.poll() is None:
            os.killpg(site.pid, signal.SIGKILL)
    assert site.returncode == 0, output
    assert f"http://127.0.0.1:{web_port}/" in output
    assert not localredis.is_up(f"redis://127.0.0.1:{redis_port}/0")
    with pytest.raises(OSError):
        get_json(f"http://127.0.0.1:{web_port}/healthz")
