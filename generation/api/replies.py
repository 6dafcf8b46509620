"""The OpenAI response bodies and stream chunks of finished or streaming jobs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generation.models import Job

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop", "timeout": "length"}


@dataclass
class Reply:
    task: str
    model: str
    job_ids: list[int]
    created: int

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

    def body(self, jobs: list[Job]) -> dict[str, Any]:
        choices = []
        for i, job in enumerate(jobs):
            reason = FINISH_REASONS.get(job.finish_reason, "stop")
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": job.output},
                                "finish_reason": reason, "logprobs": None})
            else:
                choices.append({"index": i, "text": job.output, "finish_reason": reason, "logprobs": None})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage(jobs),
                "job_ids": self.job_ids}

    def chunk(self, index: int, *, text: str | None = None, role: bool = False,
              finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}
