"""One prompt builder per task: our system prompt + the user's text, rendered with the checkpoint's own chat
template. Also the per-task default sampling settings the form falls back to."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from modelzoo.models import Task

LANGUAGES: dict[str, str] = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "java": "Java",
    "c": "C",
    "cpp": "C++",
    "csharp": "C#",
    "go": "Go",
    "rust": "Rust",
    "ruby": "Ruby",
    "php": "PHP",
    "bash": "Bash",
    "sql": "SQL",
    "html": "HTML",
}
DEFAULT_LANGUAGE = "python"

#: Summary length -> how the instruction words it.
LENGTHS: dict[str, str] = {
    "short": "in one or two sentences",
    "medium": "in one paragraph of three to five sentences",
    "long": "in several paragraphs that cover every main point",
}
DEFAULT_LENGTH = "medium"


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    repetition_penalty: float


#: Per-task defaults: code and QA stay near-greedy (exactness matters); summaries get a little freedom and a
#: repetition penalty, which small models need to avoid looping over the source text.
TASK_DEFAULTS: dict[str, SamplingDefaults] = {
    Task.CODE: SamplingDefaults(temperature=0.2, top_p=0.95, top_k=40, max_tokens=512, repetition_penalty=1.0),
    Task.QA: SamplingDefaults(temperature=0.0, top_p=1.0, top_k=0, max_tokens=256, repetition_penalty=1.05),
    Task.SUMMARIZE: SamplingDefaults(temperature=0.3, top_p=0.9, top_k=40, max_tokens=256, repetition_penalty=1.1),
    Task.CHAT: SamplingDefaults(temperature=0.0, top_p=1.0, top_k=0, max_tokens=256, repetition_penalty=1.0),
}

Message = dict[str, str]


class ChatTemplateLike(Protocol):
    def render(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str: ...


def code_messages(*, prompt: str, language: str = DEFAULT_LANGUAGE) -> list[Message]:
    name = LANGUAGES.get(language, LANGUAGES[DEFAULT_LANGUAGE])
    fence = language if language in LANGUAGES else DEFAULT_LANGUAGE
    system = (
        f"You are an expert {name} programmer. Write correct, idiomatic {name} code for the user's request. "
        f"Put the code in a single fenced code block that starts with ```{fence} and keep any explanation "
        "short and outside the code block."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt.strip()}]


def qa_messages(*, prompt: str, context: str = "") -> list[Message]:
    context = context.strip()
    if not context:
        system = "You answer questions accurately and concisely. If you do not know the answer, say so."
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt.strip()}]
    system = (
        "You answer questions using only the context the user provides. Do not use outside knowledge. "
        "If the context does not contain the answer, reply that the context does not say."
    )
    user = f"Context:\n{context}\n\nQuestion: {prompt.strip()}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def summarize_messages(*, prompt: str, length: str = DEFAULT_LENGTH) -> list[Message]:
    how = LENGTHS.get(length, LENGTHS[DEFAULT_LENGTH])
    system = (
        "You write faithful summaries. Use only facts stated in the text you are given, "
        "and do not add opinions or new information."
    )
    user = f"Summarize the following text {how}.\n\nText:\n{prompt.strip()}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def chat_messages(*, prompt: str) -> list[Message]:
    """Only the user's message: the checkpoint's template adds its own default system prompt, if any."""
    return [{"role": "user", "content": prompt}]


def build_messages(*, task: str, prompt: str, context: str = "", options: dict | None = None) -> list[Message]:
    options = options or {}
    if task == Task.CODE:
        return code_messages(prompt=prompt, language=options.get("language") or DEFAULT_LANGUAGE)
    if task == Task.QA:
        return qa_messages(prompt=prompt, context=context)
    if task == Task.SUMMARIZE:
        return summarize_messages(prompt=prompt, length=options.get("length") or DEFAULT_LENGTH)
    if task == Task.CHAT:
        if options.get("messages"):  # an API chat request: the caller's own conversation, as sent
            return [{"role": m["role"], "content": m["content"]} for m in options["messages"]]
        return chat_messages(prompt=prompt)
    raise ValueError(f"unknown task {task!r}")


def render_prompt(
    *, chat_template: ChatTemplateLike, task: str, prompt: str, context: str = "", options: dict | None = None
) -> str:
    """The full model input text of a job, ending where the assistant's reply begins."""
    messages = build_messages(task=task, prompt=prompt, context=context, options=options)
    return chat_template.render(messages, add_generation_prompt=True)


class CheckpointInfoLike(Protocol):
    tokenizer: Any
    chat_template: ChatTemplateLike


def prompt_token_ids(
    *, info: CheckpointInfoLike, task: str, prompt: str, context: str = "", options: dict | None = None
) -> list[int]:
    """The job's model input as token ids, with the checkpoint's own tokenizer and chat template. What users
    wrote stays text: only the template's own markers become control ids.

    A completion (the /v1/completions API) is the caller's raw text, without any template."""
    if task == Task.COMPLETION:
        return info.tokenizer.encode(prompt, special=False)
    messages = build_messages(task=task, prompt=prompt, context=context, options=options)
    if not any(info.tokenizer.mentions_special(message["content"]) for message in messages):
        return info.tokenizer.encode(info.chat_template.render(messages, add_generation_prompt=True))
    return info.tokenizer.encode_parts(_template_and_text_parts(info.chat_template, messages))


def _template_and_text_parts(chat_template: ChatTemplateLike, messages: list[Message]) -> list[tuple[str, bool]]:
    """The rendered prompt split into the template's text (special: True) and the messages' contents (False):
    rendered with an unguessable mark in place of each content, then split at the marks."""
    nonce = secrets.token_hex(8)
    marked = [{**message, "content": f"\ue000{nonce}:{i}\ue001"} for i, message in enumerate(messages)]
    text = chat_template.render(marked, add_generation_prompt=True)
    parts: list[tuple[str, bool]] = []
    position = 0
    for match in re.finditer(f"\ue000{nonce}:(\\d+)\ue001", text):
        parts += [(text[position:match.start()], True), (messages[int(match.group(1))]["content"], False)]
        position = match.end()
    return [*parts, (text[position:], True)]
