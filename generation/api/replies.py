"""The OpenAI response bodies and stream chunks of finished or streaming jobs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generation.models import Job

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop", "timeout": "length"}


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: list[list]) -> dict[str, Any]:
    """Stored entries ([text, logprob, [[alternative, logprob], ...]], runner.compact_logprob) as a chat choice's
    `logprobs`: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}."""
    return {"content": [{"token": text, "logprob": lp, "bytes": _utf8(text),
                         "top_logprobs": [{"token": alt, "logprob": alp, "bytes": _utf8(alt)} for alt, alp in top]}
                        for text, lp, top in entries], "refusal": None}


def completion_logprobs(entries: list[list], offset: int = 0) -> dict[str, Any]:
    """The same as a completion choice's `logprobs`: tokens, token_logprobs, top_logprobs (a {token: logprob}
    object per token) and text_offset (characters from the start of the completion, from `offset` on)."""
    offsets = []
    for text, _, _ in entries:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [dict((alt, alp) for alt, alp in e[2]) for e in entries], "text_offset": offsets}


@dataclass
class Reply:
    task: str
    model: str
    job_ids: list[int]
    created: int
    logprobs: bool = False  # the request asked for log-probabilities

    @property
    def chat(self) -> bool:
        return self.task == Job.Task.CHAT

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.job_ids[0]}"

    def usage(self, jobs: list[Job]) -> dict[str, int]:
        prompt = jobs[0].prompt_tokens or 0
        completion = sum(job.completion_tokens or 0 for job in jobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def logprobs_of(self, entries: list[list] | None, offset: int = 0) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return chat_logprobs(entries or []) if self.chat else completion_logprobs(entries or [], offset)

    def body(self, jobs: list[Job]) -> dict[str, Any]:
        choices = []
        for i, job in enumerate(jobs):
            reason = FINISH_REASONS.get(job.finish_reason, "stop")
            logprobs = self.logprobs_of(job.logprobs)
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": job.output},
                                "finish_reason": reason, "logprobs": logprobs})
            else:
                choices.append({"index": i, "text": job.output, "finish_reason": reason, "logprobs": logprobs})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage(jobs),
                "job_ids": self.job_ids}

    def chunk(self, index: int, *, text: str | None = None, role: bool = False,
              finish_reason: str | None = None, logprobs: list[list] | None = None,
              offset: int = 0) -> dict[str, Any]:
        """One stream chunk; `logprobs`, the stored-shape entries of the tokens it carries (from `offset`)."""
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
            if logprobs:
                choice["logprobs"] = self.logprobs_of(logprobs)
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason,
                      "logprobs": self.logprobs_of(logprobs, offset) if logprobs else None}
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}
