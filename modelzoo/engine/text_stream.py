"""Text on the caller's side of the engine: incremental detokenizing, stop strings, streamed deltas.

The engine speaks ids (engine.py). A TextStreamer turns one request's generated ids into
text as they arrive, and generate_text() runs one request through an Engine with a
streamer, for callers that want text (the job runner, the commands, validation).
Pure Python: no torch, no Django.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .engine import Engine
    from .sampling import SamplingParams, TokenLogprob

REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete (or invalid) UTF-8 sequence

#: Ids a window may hold back waiting for a character to complete before its text is taken as final. A
#: UTF-8 character spans at most 4 bytes, so only a stream of invalid bytes gets this far; the cap keeps
#: such a stream from re-decoding an ever longer window.
MAX_HELD_IDS = 32


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def safe_prefix_len(text: str, stops: Sequence[str]) -> int:
    """How much of text can be shown now: all but the longest tail that could begin a stop string."""
    end = len(text)
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                end = min(end, len(text) - n)
                break
    return end


class TextStreamer:
    """Turns one request's generated token ids into text, one id at a time.

    `push(token_id)` returns the text that became final with that id (often "", e.g. while a
    multi-byte character is incomplete or while the text could still be the start of a stop
    string); once a stop string completes, `stopped` is True, the text ends just before it and
    later pushes return "". `finish()` returns what is still held back when the generation ends.
    All the returned pieces concatenate to `text`, which is tokenizer.decode(all ids) cut before
    the first stop string.

    Decoding is incremental, as in vLLM's detokenizer: each push decodes a small window of ids,
    the last ones already shown (context, so decoders that drop a leading space or merge bytes
    see what precedes) plus the new ones, and takes the text past the context's. The window moves
    on only once its text ends with a whole character (no U+FFFD at the end).
    """

    def __init__(self, tokenizer: Decoder, *, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.text = ""  # everything returned so far
        self.stopped = False
        self._start = 0  # the window is token_ids[_start:]; token_ids[_start:_read] is context already shown
        self._read = 0
        self._taken = 0  # characters of the window's text already taken (the context's, at least)
        self._held = ""  # taken text not yet returned: it could begin a stop string

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        window = self.tokenizer.decode(self.token_ids[self._start :])
        whole = not window.endswith(REPLACEMENT) or len(self.token_ids) - self._read > MAX_HELD_IDS
        # Before its last character completes, the window's text is final up to its trailing U+FFFDs.
        fresh = (window if whole else window.rstrip(REPLACEMENT))[self._taken :]
        self._taken += len(fresh)
        if whole:  # move on: what was read becomes the next window's context
            self._start, self._read = self._read, len(self.token_ids)
            self._taken = len(self.tokenizer.decode(self.token_ids[self._start : self._read]))
        return self._release(self._held + fresh, final=False)

    def finish(self) -> str:
        """The text still held back, now that no more ids will come (a trailing U+FFFD stays)."""
        if self.stopped:
            return ""
        fresh = self.tokenizer.decode(self.token_ids[self._start :])[self._taken :]
        self._start = self._read = len(self.token_ids)
        self._taken = 0
        return self._release(self._held + fresh, final=True)

    def _release(self, pending: str, *, final: bool) -> str:
        cut = find_stop(pending, self.stop)
        if cut is not None:
            out, self.stopped = pending[:cut], True
        else:
            out = pending if final else pending[: safe_prefix_len(pending, self.stop)]
        self._held = "" if self.stopped or final else pending[len(out) :]
        self.text += out
        return out


@dataclass
class TextResult:
    text: str  # cut before the first stop string
    prompt_token_ids: list[int]
    token_ids: list[int]  # without an end-of-sequence token; with the tokens that spelled a stop string
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length" | "cancelled" | "timeout"
    ttft_s: float
    elapsed_s: float
    tokens_per_s: float  # decode tokens/s after the first token
    batch_size: int  # the largest batch this request ran in
    #: when params.logprobs was set: one per token id, in OpenAI's shape (see LogprobText)
    logprobs: list[dict] | None = None


class LogprobText:
    """A TokenLogprob in OpenAI's shape: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
    "bytes"}]}. A token's text is the tokenizer's decode of that id alone and `bytes` its UTF-8 (a token holding
    part of a character decodes to U+FFFD, whose bytes are given)."""

    def __init__(self, tokenizer: Decoder) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def entry(self, lp: TokenLogprob) -> dict:
        def one(token_id: int, logprob: float) -> dict:
            text = self.text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {**one(lp.token_id, lp.logprob), "top_logprobs": [one(i, v) for i, v in lp.top]}


def generate_text(
    engine: Engine,
    tokenizer: Decoder,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    on_text: Callable[[str], None] | None = None,
    on_logprob: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    deadline: float | None = None,
) -> TextResult:
    """One request through `engine`, as text: stopped at the first of `params.stop`, decoded by `tokenizer`.

    `on_text(delta)` receives the text as it becomes final; the deltas concatenate to the result's
    text. It is called on the engine's thread while tokens arrive (keep it short: the whole batch
    waits), and once more on the calling thread for the text held back to the end. An exception it
    raises fails the request and is raised here. With params.logprobs set, `on_logprob(entry)` receives each
    token's entry (LogprobText) just before the text that token made final, and the result holds them all.
    Otherwise as Engine.generate.
    """
    texts = LogprobText(tokenizer) if params.logprobs is not None else None
    if on_text is None and on_logprob is None and not params.stop:  # nothing to stream or watch: decode once at the end
        result = engine.generate(prompt_ids, params, should_cancel=should_cancel, deadline=deadline)
        text, finish_reason = tokenizer.decode(result.token_ids), result.finish_reason
    else:
        streamer = TextStreamer(tokenizer, stop=params.stop)

        def on_token(token_id: int, lp: TokenLogprob | None = None) -> bool:
            if lp is not None and on_logprob is not None and texts is not None and not streamer.stopped:
                on_logprob(texts.entry(lp))
            delta = streamer.push(token_id)
            if delta and on_text is not None:
                on_text(delta)
            return streamer.stopped

        result = engine.generate(prompt_ids, params, on_token=on_token, should_cancel=should_cancel, deadline=deadline)
        tail = streamer.finish()
        if tail and on_text is not None:
            on_text(tail)
        text = streamer.text
        finish_reason = "stop" if streamer.stopped else result.finish_reason
    return TextResult(
        text=text,
        prompt_token_ids=result.prompt_token_ids,
        token_ids=result.token_ids,
        finish_reason=finish_reason,
        ttft_s=result.ttft_s,
        elapsed_s=result.elapsed_s,
        tokens_per_s=result.tokens_per_s,
        batch_size=result.batch_size,
        logprobs=[texts.entry(lp) for lp in result.logprobs or []] if texts is not None else None,
    )
