"""`manage.py loadtest`: load a running site through its OpenAI-compatible API, like vLLM's serving benchmark,
and report throughput, time to first token and end-to-end latency percentiles (overall and per user), the 429s
and 503s with their Retry-After values, errors, and fairness between users.

It makes its users (`loadtest-1` … `loadtest-N`, reused when present, with no usable password) and a fresh
API key for each (named `loadtest`; the previous run's `loadtest` keys are revoked) in the database the
command's settings point at, so run it with the same `DATABASE_URL`/`LLMSITE_VAR_DIR` as the site. Every
request is a chat completion and becomes a job in its user's history. The figures come from
generation.loadstats.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation import limits, loadstats, services
from generation.loadstats import RequestResult, Summary
from modelzoo.models import Checkpoint

KEY_NAME = "loadtest"
USERNAME = "loadtest-{}"
DEFAULT_PROMPT = "What is the capital of France?"
#: How long a retried 429/503 waits when its answer carries no usable Retry-After.
DEFAULT_RETRY_WAIT_S = 1.0


class Command(BaseCommand):
    help = ("Load a running site through /v1/chat/completions with N users at once and print throughput, TTFT "
            "and latency percentiles, 429s/503s and fairness between users.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the site (its /v1 API)")
        parser.add_argument("--users", type=int, default=2, help="users loading the site at once")
        parser.add_argument("--requests", type=int, default=8, help="requests per user")
        parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per user")
        parser.add_argument("--max-tokens", type=int, default=16)
        parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message of every request")
        parser.add_argument("--model", help="model id (default: the site's default checkpoint)")
        parser.add_argument("--stream", action="store_true",
                            help="stream the answers and measure the time to the first token")
        parser.add_argument("--retry", action="store_true",
                            help="retry a 429/503 after its Retry-After (else it is counted and not retried)")
        parser.add_argument("--max-retries", type=int, default=20, help="with --retry: retries per request")
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("users", "requests", "concurrency"):
            if options[name] < 1:
                raise CommandError(f"--{name} must be at least 1")
        if options["max_tokens"] not in limits.MAX_TOKENS:
            raise CommandError(f"--max-tokens must be in {limits.MAX_TOKENS}, got {options['max_tokens']}")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per request
        model = options["model"] or _default_model()
        keys = loadtest_keys(n=options["users"])
        plan = Plan(
            base_url=options["base_url"].rstrip("/"), model=model, prompt=options["prompt"],
            max_tokens=options["max_tokens"], requests=options["requests"], concurrency=options["concurrency"],
            stream=options["stream"], retry=options["retry"], max_retries=options["max_retries"],
            timeout_s=options["timeout"],
        )
        started = time.monotonic()
        results = asyncio.run(run_load(plan=plan, keys=keys))
        summary = loadstats.summarize(results, duration_s=time.monotonic() - started)
        if options["json"]:
            self.stdout.write(json.dumps({"plan": {**asdict(plan), "users": len(keys)}, **summary.as_dict()}))
        else:
            self.stdout.write(report(plan=plan, users=len(keys), summary=summary))


def _default_model() -> str:
    checkpoint = Checkpoint.default()
    if checkpoint is None:
        raise CommandError("no checkpoint is ready; pass --model")
    return checkpoint.name


def loadtest_keys(*, n: int) -> dict[str, str]:
    """Username -> a fresh API key secret for loadtest-1 … loadtest-n, made (or reused) in the database."""
    User = get_user_model()
    keys = {}
    for i in range(1, n + 1):
        user, created = User.objects.get_or_create(username=USERNAME.format(i))
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        for key in user.api_keys.filter(name=KEY_NAME, revoked_at__isnull=True):
            services.api_key_revoke(key=key)
        keys[user.username] = services.api_key_create(owner=user, name=KEY_NAME)[1]
    return keys


@dataclass(frozen=True)
class Plan:
    base_url: str
    model: str
    prompt: str
    max_tokens: int
    requests: int  # per user
    concurrency: int  # per user
    stream: bool
    retry: bool
    max_retries: int
    timeout_s: float

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": self.prompt}],
                                "max_tokens": self.max_tokens, "temperature": 0}
        if self.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body


async def run_load(*, plan: Plan, keys: dict[str, str]) -> list[RequestResult]:
    """Every user's requests at once, each user with `plan.concurrency` in flight."""
    per_user = await asyncio.gather(*(_user_load(plan=plan, user=user, secret=secret) for user, secret in keys.items()))
    return [result for results in per_user for result in results]


async def _user_load(*, plan: Plan, user: str, secret: str) -> list[RequestResult]:
    pool = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    async with httpx.AsyncClient(base_url=plan.base_url, headers={"Authorization": f"Bearer {secret}"},
                                 timeout=plan.timeout_s, limits=pool) as client:
        slots = asyncio.Semaphore(plan.concurrency)

        async def one() -> RequestResult:
            async with slots:
                return await request_once(client=client, plan=plan, user=user)

        return list(await asyncio.gather(*(one() for _ in range(plan.requests))))


@dataclass
class _Answer:
    status: int
    retry_after: str | None = None
    ttft_s: float | None = None
    output_tokens: int = 0
    error: str | None = None


async def request_once(*, client: httpx.AsyncClient, plan: Plan, user: str) -> RequestResult:
    """One request, retried after 429/503 when `plan.retry`. Latency and TTFT count from the first send, so a
    retried request's waits are in them (what its user waited)."""
    started = time.monotonic()
    rejections: list[tuple[int, str | None]] = []
    while True:
        try:
            if plan.stream:
                answer = await _send_streamed(client, plan.body(), started)
            else:
                answer = await _send(client, plan.body())
        except httpx.HTTPError as exc:
            return RequestResult(user=user, status=None, latency_s=time.monotonic() - started,
                                 rejections=tuple(rejections), error=f"{type(exc).__name__}: {exc}")
        if answer.status in (429, 503):
            rejections.append((answer.status, answer.retry_after))
            if plan.retry and len(rejections) <= plan.max_retries:
                await asyncio.sleep(retry_wait_s(answer.retry_after))
                continue
            answer.error = None  # counted as a rejection, not an error
        return RequestResult(user=user, status=answer.status, latency_s=time.monotonic() - started,
                             ttft_s=answer.ttft_s, output_tokens=answer.output_tokens,
                             rejections=tuple(rejections), error=answer.error)


def retry_wait_s(retry_after: str | None) -> float:
    """Seconds to wait for a Retry-After header in seconds (an HTTP date, or none, waits the default)."""
    try:
        return max(0.0, float(retry_after)) if retry_after is not None else DEFAULT_RETRY_WAIT_S
    except ValueError:
        return DEFAULT_RETRY_WAIT_S


def _error_text(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except Exception:
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"


async def _send(client: httpx.AsyncClient, body: dict[str, Any]) -> _Answer:
    response = await client.post("/v1/chat/completions", json=body)
    answer = _Answer(status=response.status_code, retry_after=response.headers.get("retry-after"))
    if response.status_code != 200:
        answer.error = _error_text(response)
        return answer
    answer.output_tokens = int(response.json().get("usage", {}).get("completion_tokens", 0))
    return answer


async def _send_streamed(client: httpx.AsyncClient, body: dict[str, Any], started: float) -> _Answer:
    """Read the server-sent events: TTFT at the first chunk with text, output tokens from the usage chunk (else
    the text chunks counted), an error for an error chunk or a stream that ends without `[DONE]`."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        answer = _Answer(status=response.status_code, retry_after=response.headers.get("retry-after"))
        if response.status_code != 200:
            await response.aread()
            answer.error = _error_text(response)
            return answer
        chunks, usage, done = 0, None, False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                answer.error = f"stream error: {event['error'].get('message')}"
                return answer
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if answer.ttft_s is None:
                        answer.ttft_s = time.monotonic() - started
        if not done:
            answer.error = "the stream ended without [DONE]"
        answer.output_tokens = int(usage["completion_tokens"]) if usage else chunks
        return answer


# --- the printed report ----------------------------------------------------------------------------------------


def _seconds(figures: dict[str, float | None]) -> str:
    return " / ".join("-" if value is None else f"{value:.3f}" for value in figures.values())


def _row(name: str, s: Summary, *, width: int) -> str:
    return (f"{name:<{width}} {s.requests:>5} {s.succeeded:>5} {s.rate_limited:>5} {s.unavailable:>5} {s.errors:>5} "
            f"{s.requests_per_s:>7.2f} {s.output_tokens_per_s:>8.1f}  {_seconds(s.ttft_s):<23} "
            f"{_seconds(s.latency_s)}")


def report(*, plan: Plan, users: int, summary: Summary) -> str:
    width = max(len("overall"), *(len(user) for user in summary.users))
    retry_after = ", ".join(f"{value} s x{count}" for value, count in summary.retry_after.items()) or "none"
    fairness = "-" if summary.fairness is None else f"{summary.fairness:.2f}"
    lines = [
        f"{users} users x {plan.requests} requests, concurrency {plan.concurrency} per user, max_tokens "
        f"{plan.max_tokens}, {'streamed' if plan.stream else 'not streamed'}{', retrying' if plan.retry else ''}; "
        f"model {plan.model} at {plan.base_url}",
        f"{summary.requests} requests: {summary.succeeded} ok, {summary.rate_limited} x 429, "
        f"{summary.unavailable} x 503 (Retry-After: {retry_after}), {summary.errors} errors",
        f"throughput: {summary.requests_per_s:.2f} requests/s, {summary.output_tokens_per_s:.1f} output tokens/s "
        f"({summary.output_tokens} tokens)",
        "",
        f"{'':<{width}} {'reqs':>5} {'ok':>5} {'429':>5} {'503':>5} {'err':>5} {'req/s':>7} {'tok/s':>8}  "
        f"{'TTFT p50/p95/p99 s':<23} latency p50/p95/p99 s",
        _row("overall", summary, width=width),
        *(_row(user, s, width=width) for user, s in summary.users.items()),
        "",
        f"fairness (slowest user's median latency / fastest's): {fairness}",
    ]
    if not plan.stream:
        lines.append("(TTFT is measured with --stream only)")
    return "\n".join(lines) + "\n"
