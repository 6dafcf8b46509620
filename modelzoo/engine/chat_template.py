"""The checkpoint's own chat template, rendered in a sandboxed Jinja2 environment under a budget.

The environment matches what Hugging Face transformers gives templates
(trim_blocks, lstrip_blocks, loopcontrols, raise_exception, strftime_now, a
non-escaping tojson), so the same template renders the same text here.
Templates come from uploaded checkpoints: they are untrusted code, hence the
immutable sandbox, which blocks attribute escapes but not the work or memory a
template takes. So each render also runs under a budget:

- steps: every loop iteration and every call (functions, methods, macros) counts one,
  at most MAX_STEPS per render (three nested range(100000) loops stop after a fraction
  of a second instead of running 10^15 times);
- sizes: `*`, `+`, `%`, `**` and `~` refuse to build a string or list longer than
  MAX_VALUE_CHARS (or an integer wider than MAX_INT_BITS) before they build it; calls
  and filters refuse such an integer argument, and any longer result;
- output: at most MAX_VALUE_CHARS characters in all.

Past a bound, TemplateBudgetError (a Jinja2 SecurityError) names it.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import CheckpointError

# Used when a checkpoint carries no template (ChatML, the common default).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: What validation renders a template with (and the smoke generation then answers).
SAMPLE_MESSAGES = [{"role": "user", "content": "Say hello."}]

MAX_STEPS = 1_000_000
MAX_VALUE_CHARS = 1 << 24  # characters of a string (items of a list), and of a whole render
MAX_INT_BITS = 1 << 16
MACRO_CALL_STEPS = 10  # a macro call costs Jinja some ten times a loop iteration
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\d+)|%[-#0 +]*\d*\.(\d+)")
_FIELD_WIDTH = re.compile(r"\d{8,}")  # in a str.format string, any number this long (a width or precision)


class TemplateBudgetError(jinja2.exceptions.SecurityError):
    """A template went past the work or size a render may take."""


class _Budget:
    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.output = MAX_VALUE_CHARS

    def step(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise TemplateBudgetError(f"the template took more than {MAX_STEPS} steps (loop iterations and calls)")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chat_template_budget", default=None)


def _step(n: int = 1) -> None:
    if (budget := _budget.get()) is not None:
        budget.step(n)


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, dict, bytes)) and len(value) > MAX_VALUE_CHARS:
        raise TemplateBudgetError(f"{what} built a value of {len(value)} items; "
                                  f"at most {MAX_VALUE_CHARS} fit in memory")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateBudgetError(f"{what} built an integer of {value.bit_length()} bits; at most {MAX_INT_BITS}")
    return value


def _check_arguments(args: tuple, kwargs: dict, what: str) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE_CHARS:
            raise TemplateBudgetError(f"{what} was given {value}; arguments above {MAX_VALUE_CHARS} would take "
                                      "more memory than a template may")


def _budget_iter(iterable: Any) -> Iterator[Any]:
    """What every `{% for %}` iterates: the loop's items, one budget step each."""
    for item in iterable:
        _step()
        yield item


def _budget_concat(*parts: Any) -> str:
    """The `~` operator: str_join, refusing results past MAX_VALUE_CHARS before they are built."""
    texts = [str(part) for part in parts]
    if sum(map(len, texts)) > MAX_VALUE_CHARS:
        raise TemplateBudgetError(f"'~' would build a string of {sum(map(len, texts))} characters; "
                                  f"at most {MAX_VALUE_CHARS} fit in memory")
    return "".join(texts)


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple, bytes)) else None


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, counting calls and refusing operators whose results would be too large."""

    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            for width in _FIELD_WIDTH.findall(obj):
                if int(width) > MAX_VALUE_CHARS:
                    raise TemplateBudgetError(f"str.format would fill a field {width} characters wide; "
                                              f"at most {MAX_VALUE_CHARS} fit in memory")
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's spelling)
        _step(MACRO_CALL_STEPS if isinstance(__obj, jinja2.runtime.Macro) else 1)
        _check_arguments(args, kwargs, f"a call of {getattr(__obj, '__name__', 'a function')}")
        return _check_size(super().call(__context, __obj, *args, **kwargs), f"{getattr(__obj, '__name__', 'a call')}()")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _sized(seq) is not None and isinstance(n, int) and _sized(seq) * n > MAX_VALUE_CHARS:
                    raise TemplateBudgetError(f"'*' would build a value of {_sized(seq) * n} items "
                                              f"({_sized(seq)} x {n}); at most {MAX_VALUE_CHARS} fit in memory")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateBudgetError(f"'*' would build an integer of over {MAX_INT_BITS} bits")
        elif operator == "+":
            if None not in (_sized(left), _sized(right)) and _sized(left) + _sized(right) > MAX_VALUE_CHARS:
                raise TemplateBudgetError(f"'+' would build a value of {_sized(left) + _sized(right)} items; "
                                          f"at most {MAX_VALUE_CHARS} fit in memory")
        elif operator == "%" and isinstance(left, str):
            for match in _FORMAT_WIDTH.finditer(left):
                width = int(match.group(1) or match.group(2))
                if width > MAX_VALUE_CHARS:
                    raise TemplateBudgetError(f"'%' would format a field {width} characters wide; "
                                              f"at most {MAX_VALUE_CHARS} fit in memory")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * math.log2(abs(left)) > MAX_INT_BITS:
                raise TemplateBudgetError(f"'**' would build an integer of over {MAX_INT_BITS} bits "
                                          f"({left} ** {right})")
        return _check_size(super().call_binop(context, operator, left, right), f"'{operator}'")


def _budgeted_filter(name: str, function: Any) -> Any:
    value_at = 2 if getattr(function, "jinja_pass_arg", None) is not None else 1  # after the context, if passed

    @functools.wraps(function)  # keeps Jinja's pass_context / pass_environment marks
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _step()
        _check_arguments(args[value_at:], kwargs, f"the filter {name}")
        return _check_size(function(*args, **kwargs), f"the filter {name}")

    return wrapper


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _budget_the_tree(tree: nodes.Template) -> nodes.Template:
    """Every loop iterates through _budget_iter and every `~` is _budget_concat: the two things a template
    repeats or grows that pass through no call the environment sees."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.Name("_budget_iter", "load"), [loop.iter], [], None, None, lineno=loop.lineno)
    # Children before parents (a pre-order list reversed), so a `~` inside a `~` is converted first.
    for parent in reversed([tree, *tree.find_all(nodes.Node)]):
        for name, child in parent.iter_fields():
            if isinstance(child, nodes.Concat):
                setattr(parent, name, _as_call(child))
            elif isinstance(child, list):
                setattr(parent, name, [_as_call(c) if isinstance(c, nodes.Concat) else c for c in child])
    return tree


def _as_call(concat: nodes.Concat) -> nodes.Call:
    return nodes.Call(nodes.Name("_budget_concat", "load"), list(concat.nodes), [], None, None, lineno=concat.lineno)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = _BudgetedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters = {name: _budgeted_filter(name, function) for name, function in env.filters.items()}
    env.filters["tojson"] = _budgeted_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["_budget_iter"] = _budget_iter
    env.globals["_budget_concat"] = _budget_concat
    return env.from_string(_budget_the_tree(env.parse(source)))


class ChatTemplate:
    def __init__(self, source: str | None, *, special_tokens: dict[str, str] | None = None) -> None:
        self.source = source or CHATML_TEMPLATE
        self.special_tokens = dict(special_tokens or {})  # bos_token, eos_token, ... as text
        self._template = _compile(self.source)  # syntax errors surface at load time

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        budget = _Budget()
        token = _budget.set(budget)
        try:
            parts: list[str] = []
            for part in self._template.generate(
                messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None,
                **self.special_tokens,
            ):
                budget.output -= len(part)
                if budget.output < 0:
                    raise TemplateBudgetError(f"the template wrote more than {MAX_VALUE_CHARS} characters")
                parts.append(part)
            return "".join(parts)
        finally:
            _budget.reset(token)


def template_source(value: Any, *, key: str) -> str | None:
    """The template a checkpoint gives under `key`: a string, or Hugging Face's list of named templates (the
    one named "default"); None when it gives none."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(t, dict) for t in value):
        named = {t.get("name"): t.get("template") for t in value}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise CheckpointError(f"{key} is {str(value)[:100]}; a template (a string, or a list of named templates "
                          "with one named 'default')")


def check_template(source: str | None, *, special_tokens: dict[str, str] | None = None) -> str:
    """Compile and render `source` on SAMPLE_MESSAGES (validation's check), any failure a CheckpointError
    that says what the template did."""
    try:
        template = ChatTemplate(source, special_tokens=special_tokens)
    except jinja2.TemplateSyntaxError as error:
        raise CheckpointError(f"the chat template does not compile (line {error.lineno}: {error.message})") from None
    try:
        return template.render(SAMPLE_MESSAGES, add_generation_prompt=True)
    except TemplateBudgetError as error:
        raise CheckpointError(f"the chat template went past its budget: {error}") from None
    except jinja2.TemplateError as error:
        raise CheckpointError(f"the chat template failed: {error}") from None
    except RecursionError:
        raise CheckpointError("the chat template recursed too deeply") from None
    except MemoryError:
        raise CheckpointError("the chat template ran out of memory") from None
    except Exception as error:  # an operation a template applied to the wrong values (TypeError, ...)
        raise CheckpointError(f"the chat template failed: {type(error).__name__}: {error}") from None
