"""Conversations as the model sees them: the system-prompt presets, a thread's turns as chat messages, and the
trimming of the oldest turns to fit the context window. Pure functions of their arguments (plus
limits.fit_context, which reads the checkpoint's tokenizer); services.py stores what they decide."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from generation import limits, prompts
from modelzoo.models import Checkpoint, Task

Message = prompts.Message


@dataclass(frozen=True)
class Preset:
    label: str
    system_prompt: str


def _system_of(messages: list[Message]) -> str:
    return next(m["content"] for m in messages if m["role"] == "system")


#: System prompts a conversation can start from (the user edits them freely): a plain assistant, and the ones
#: the code, question-answering and summarization jobs use (taken from prompts.py, their one home).
PRESETS: dict[str, Preset] = {
    "assistant": Preset("Assistant", "You are a helpful assistant. Answer clearly and concisely."),
    Task.CODE.value: Preset("Code", _system_of(prompts.code_messages(prompt="-"))),
    Task.QA.value: Preset("Question answering", _system_of(prompts.qa_messages(prompt="-"))),
    Task.SUMMARIZE.value: Preset("Summarization", _system_of(prompts.summarize_messages(prompt="-"))),
}
DEFAULT_PRESET = "assistant"

#: The user message that asks for the rest of an answer cut at the token limit (see services.job_continue).
CONTINUE_PROMPT = "Continue exactly where your previous answer stopped. Do not repeat anything; do not start over."


def system_messages(system_prompt: str) -> list[Message]:
    """The system message that starts a request: none for a blank system prompt (the checkpoint's template may
    then add its own)."""
    return [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []


def turn_messages(turns: Iterable[Any]) -> list[list[Message]]:
    """Earlier turns (Jobs, oldest first) as groups of messages, one group per exchange: the user's message and
    the answer. A turn without an answer (failed, or still running) is left out: the model would see a
    question nobody answered. A continuation turn adds its text to the answer it continues, so the model sees
    one answer, as the page shows it."""
    groups: list[list[Message]] = []
    for turn in turns:
        if not turn.is_finished or not turn.output:
            continue
        if turn.options.get("continues") and groups and groups[-1][-1]["role"] == "assistant":
            groups[-1][-1] = {"role": "assistant", "content": groups[-1][-1]["content"] + turn.output}
            continue
        groups.append([{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.output}])
    return groups


def preamble_groups(messages: list[Message]) -> list[list[Message]]:
    """Carried-over messages as exchanges: each user message starts one (so trimming drops whole exchanges)."""
    groups: list[list[Message]] = []
    for message in messages:
        if message["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append({"role": message["role"], "content": message["content"]})
    return groups


@dataclass(frozen=True)
class Plan:
    """What a new turn sends: the messages, how many earlier exchanges were left out, the token counts."""

    messages: list[Message]
    left_out: int
    prompt_tokens: int
    max_tokens: int


def fit_turns(*, checkpoint: Checkpoint, system_prompt: str, history: list[list[Message]], new: list[Message],
              max_tokens: int | None, default_max_tokens: int | None = None) -> Plan:
    """The messages of the next request: the system prompt, as many of the most recent exchanges of `history`
    as fit the context window together with `new` and `max_tokens` new tokens (the oldest are left out
    first), then `new`. With `max_tokens` None the answer gets `default_max_tokens` or what room is left.
    Raises limits.ContextTooLong when even `new` alone does not fit."""
    system = system_messages(system_prompt)
    # Trying the full history first is the common case; past the window, look for the smallest cut.
    low, high = 0, len(history)  # invariant: dropping `high` exchanges is enough (or nothing is)
    last_error: limits.ContextTooLong | None = None

    def attempt(drop: int) -> limits.Fit | None:
        nonlocal last_error
        messages = system + [m for group in history[drop:] for m in group] + new
        try:
            return limits.fit_context(checkpoint=checkpoint, task=Task.CHAT, prompt=new[-1]["content"],
                                      options={"messages": messages}, max_tokens=max_tokens,
                                      default_max_tokens=default_max_tokens)
        except limits.ContextTooLong as exc:
            last_error = exc
            return None

    fit = attempt(0)
    if fit is not None:
        return _plan(system, history, new, 0, fit)
    fits = {high: attempt(high)} if history else {}
    if fits.get(high) is None:
        raise last_error or limits.ContextTooLong(prompt_tokens=0, max_tokens=max_tokens, window=0)
    while high - low > 1:  # fitting only gets easier the more is dropped: the smallest cut, in log(n) tries
        middle = (low + high) // 2
        fits[middle] = attempt(middle)
        if fits[middle] is not None:
            high = middle
        else:
            low = middle
    return _plan(system, history, new, high, fits[high])


def _plan(system: list[Message], history: list[list[Message]], new: list[Message], drop: int,
          fit: limits.Fit) -> Plan:
    messages = system + [m for group in history[drop:] for m in group] + new
    return Plan(messages=messages, left_out=drop, prompt_tokens=len(fit.prompt_ids), max_tokens=fit.max_tokens)


def split_chat_job(messages: list[Message]) -> tuple[str, list[Message], str]:
    """A chat job's messages as (system prompt, earlier messages, the last user message): how a chat job
    opens as a conversation that repeats it."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
    if rest and rest[-1]["role"] == "user":
        return system, rest[:-1], rest[-1]["content"]
    return system, rest, ""
