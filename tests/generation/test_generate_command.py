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
