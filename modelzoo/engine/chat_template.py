"""The checkpoint's own chat template, rendered in a sandboxed Jinja2 environment.

The environment matches what Hugging Face transformers gives templates
(trim_blocks, lstrip_blocks, loopcontrols, raise_exception, strftime_now, a
non-escaping tojson), so the same template renders the same text here.
Templates come from uploaded checkpoints: they are untrusted code, hence the
immutable sandbox.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a checkpoint carries no template (ChatML, the common default).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    def __init__(self, source: str | None, *, special_tokens: dict[str, str] | None = None) -> None:
        self.source = source or CHATML_TEMPLATE
        self.special_tokens = dict(special_tokens or {})  # bos_token, eos_token, ... as text
        self._template = _compile(self.source)  # syntax errors surface at load time

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None, **self.special_tokens
        )
