"""Reading an OpenAI request body into a GenerationRequest: the JSON itself (400 invalid_json, nested too
deeply, strings that are not valid Unicode or hold NUL), then every parameter checked against
generation.limits, 400 naming the parameter, 404 for an unknown model, 400 context_length_exceeded."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator

from generation import limits
from generation.api.errors import ApiError
from generation.models import Job
from modelzoo.models import Checkpoint

ROLES = ("system", "user", "assistant")
#: max_tokens when the request gives none (OpenAI's completions default is 16), trimmed to what fits.
DEFAULT_MAX_TOKENS = {Job.Task.CHAT: 256, Job.Task.COMPLETION: 16}
#: top_logprobs (chat) and logprobs (completions): how many alternatives per token (the engine's MAX_LOGPROBS;
#: OpenAI allows 20 and 5).
LOGPROBS = limits.Range(0, 20)


#: How deep a request body's arrays and objects may nest (chat content parts are 5 levels deep). json.loads
#: itself gives up (RecursionError) somewhere past a thousand levels.
MAX_JSON_DEPTH = 64
#: What the new-job form says of a NUL character (Django's CharField refuses them), said here too.
NULL_CHARACTERS_MESSAGE = str(ProhibitNullCharactersValidator.message)


def read_json(raw: bytes) -> Any:
    """The request body as JSON: 400 `invalid_json` when it does not parse or nests deeper than MAX_JSON_DEPTH,
    400 naming the parameter (`messages[0].content`, `stop[1]`) for a string that is not valid Unicode (a lone
    surrogate such as "\\ud800", which JSON can escape but no text can hold) or that holds a NUL character."""
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise ApiError(400, f"The request body nests arrays or objects too deeply (at most {MAX_JSON_DEPTH} "
                            "levels)", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, bytes that are not UTF-8, integers past Python's digit limit
        raise ApiError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    for param, text in _strings(body):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"Invalid '{param}': not valid Unicode (a lone surrogate, "
                                f"U+{ord(text[exc.start]):04X}, at character {exc.start}).", param=param,
                           code="invalid_value") from None
        if "\x00" in text:
            raise ApiError(400, f"Invalid '{param}': {NULL_CHARACTERS_MESSAGE}", param=param, code="invalid_value")
    return body


def _strings(body: Any) -> Iterator[tuple[str, str]]:
    """(parameter path, string) of every string in the body, object keys included (named by their object),
    in document order; raises 400 past MAX_JSON_DEPTH. Iterative, so no depth can exhaust Python's stack."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)) and depth >= MAX_JSON_DEPTH:
            raise ApiError(400, f"The request body nests arrays or objects too deeply (at most {MAX_JSON_DEPTH} "
                                "levels)", code="invalid_json")
        if isinstance(value, dict):
            children = []
            for key, item in value.items():
                yield path or "body", key
                children.append((item, f"{path}.{key}" if path else key, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]))
        elif isinstance(value, str):
            yield path or "body", value


@dataclass
class GenerationRequest:
    task: str
    checkpoint: Checkpoint
    prompt: str
    options: dict[str, Any]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    prompt_tokens: int = 0
    logprobs: int | None = None  # alternatives per token, None = no log-probabilities
    job_ids: list[int] = field(default_factory=list)


def _number(body: dict, name: str, default: float, bounds: limits.Range) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ApiError(400, f"'{name}' must be a number", param=name, code="invalid_type")
    if value not in bounds:
        raise ApiError(400, f"'{name}' must be in {bounds}, got {value}", param=name, code="invalid_value")
    return float(value)


def _integer(body: dict, name: str, bounds: limits.Range) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer", param=name, code="invalid_type")
    if value not in bounds:
        raise ApiError(400, f"'{name}' must be between {int(bounds.low)} and {int(bounds.high)}", param=name,
                       code="invalid_value")
    return value


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages", code="invalid_value")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (*ROLES, "developer"):
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role",
                           code="invalid_value")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content", code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content",
                           code="invalid_type")
        role = "system" if message["role"] == "developer" else message["role"]
        clean.append({"role": role, "content": content})
    return clean


def parse_request(body: Any, *, task: str) -> GenerationRequest:
    """Validate an OpenAI request body (400 naming the parameter, 404 for an unknown model) and count the
    prompt's tokens against the context window the workers serve (400 context_length_exceeded)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", param="model", code="missing_required_parameter")
    checkpoint = Checkpoint.objects.ready().filter(name=model).first()
    if checkpoint is None:
        raise ApiError(404, f"The model '{model}' does not exist or is not ready", type="invalid_request_error",
                       param="model", code="model_not_found")
    if task == Job.Task.CHAT:
        messages = _messages(body)
        options: dict[str, Any] = {"messages": messages}
        users = [m["content"] for m in messages if m["role"] == "user"]
        prompt, prompt_param = (users[-1] if users else messages[-1]["content"]), "messages"
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (token arrays and batches are not supported)",
                           param="prompt", code="invalid_type")
        options, prompt_param = {}, "prompt"
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > limits.MAX_STOP_STRINGS
                             or not all(isinstance(s, str) for s in stop)):
        raise ApiError(400, f"'stop' must be a string or an array of at most {limits.MAX_STOP_STRINGS} strings",
                       param="stop", code="invalid_value")
    if stop:
        options["stop"] = stop
    logprobs = _logprobs(body, task=task)
    if logprobs is not None:
        options["logprobs"] = logprobs
    temperature = _number(body, "temperature", 1.0, limits.TEMPERATURE)
    top_p = _number(body, "top_p", 1.0, limits.TOP_P)
    seed = _integer(body, "seed", limits.SEED)
    n = _integer(body, "n", limits.N) or 1
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, max_name, limits.MAX_TOKENS)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options", code="invalid_type")

    try:
        fit = limits.fit_context(checkpoint=checkpoint, task=task, prompt=prompt, options=options,
                                 max_tokens=max_tokens, default_max_tokens=DEFAULT_MAX_TOKENS[task])
    except limits.ContextTooLong as exc:
        if exc.prompt_too_long:
            raise ApiError(400, f"This model's maximum context length is {exc.window} tokens, but your "
                                f"{prompt_param} is {exc.prompt_tokens} tokens.", param=prompt_param,
                           code="context_length_exceeded") from None
        raise ApiError(400, f"This model's maximum context length is {exc.window} tokens. However, you requested "
                            f"{exc.prompt_tokens + exc.max_tokens} tokens ({exc.prompt_tokens} in the {prompt_param}, "
                            f"{exc.max_tokens} for the completion).", param=max_name,
                       code="context_length_exceeded") from None
    return GenerationRequest(
        task=task, checkpoint=checkpoint, prompt=prompt, options=options, max_tokens=fit.max_tokens,
        temperature=temperature, top_p=top_p, seed=seed, n=n, stream=stream,
        include_usage=bool(stream_options.get("include_usage")), prompt_tokens=len(fit.prompt_ids),
        logprobs=logprobs,
    )


def _logprobs(body: dict, *, task: str) -> int | None:
    """Chat: `logprobs` true and `top_logprobs` 0..20 (0 when not given); completions: `logprobs` 0..20."""
    if task != Job.Task.CHAT:
        return _integer(body, "logprobs", LOGPROBS)
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, "'logprobs' must be a boolean", param="logprobs", code="invalid_type")
    top = _integer(body, "top_logprobs", LOGPROBS)
    if top is not None and not wanted:
        raise ApiError(400, "'logprobs' must be true when 'top_logprobs' is given", param="top_logprobs",
                       code="invalid_value")
    return (top or 0) if wanted else None
