"""manage.py generate: one generation through the pool and engine the workers use."""
from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from modelzoo import pool

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("generate", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.slow
def test_it_prints_one_json_object(checkpoint):
    data = json.loads(run("--json", "--max-tokens", "5", "--task", "chat", "What is 2+2?"))
    assert set(data) >= {"text", "prompt_token_ids", "token_ids", "ttft_s", "tokens_per_s"}
    assert 1 <= len(data["token_ids"]) <= 5
    assert data["checkpoint"] == checkpoint.name


@pytest.mark.slow
def test_it_is_deterministic_when_greedy(checkpoint):
    first = json.loads(run("--json", "--max-tokens", "6", "--temperature", "0", "Name a colour."))
    second = json.loads(run("--json", "--max-tokens", "6", "--temperature", "0", "Name a colour."))
    assert first["token_ids"] == second["token_ids"]


@pytest.mark.slow
def test_it_uses_the_task_prompt_builder(checkpoint):
    tokenizer = pool.checkpoint_info(checkpoint).tokenizer
    code = json.loads(run("--json", "--max-tokens", "1", "--task", "code", "add two numbers"))
    chat = json.loads(run("--json", "--max-tokens", "1", "--task", "chat", "add two numbers"))
    assert "You are an expert Python programmer." in tokenizer.decode(code["prompt_token_ids"])
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(chat["prompt_token_ids"])


def test_it_rejects_an_unknown_checkpoint(checkpoint):
    with pytest.raises(CommandError, match="no ready checkpoint named 'nope'"):
        run("--checkpoint", "nope", "hi")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_exits_cleanly_every_time(tmp_path):
    """Its engine thread is stopped and joined before the interpreter exits: a thread still inside torch at exit
    used to abort the process (SIGABRT, "terminate called without an active exception") after the result.
    Six processes, two at a time: each spends most of its ~13 s loading the model, mostly on one core, so the
    six take ~65 s instead of ~85 s on the 2-core test machine."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "LLMSITE_VAR_DIR": str(tmp_path / "var")}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=root, env=env, check=True, timeout=300)

    def generate(_: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", "generate", "--json", "--max-tokens", "2", "Hi."],
                              cwd=root, env=env, capture_output=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        children = list(pool.map(generate, range(6)))
    assert len(children) == 6
    for child in children:
        assert child.returncode == 0, child.stderr.decode(errors="replace")[-2000:]
        assert len(json.loads(child.stdout)["token_ids"]) <= 2
