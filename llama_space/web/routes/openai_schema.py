"""The OpenAI chat-completions wire format: validating a request and shaping replies, errors and stream chunks."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.inference.params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.web.errors import RequestError
from llama_space.web.routes.common import get_field

if TYPE_CHECKING:
    from llama_space.inference.backend import ReplyStream
    from llama_space.inference.backend import ChatBackend

DEFAULT_MAX_TOKENS = 512
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Request fields whose meaning we cannot honour: refusing them beats silently answering something else.
UNSUPPORTED = {"tools": "tool calling", "functions": "function calling", "logprobs": "logprobs",
               "audio": "audio output"}


@dataclass
class ChatRequest:
    """A validated POST /v1/chat/completions body."""

    model: str  # the id the client asked for, echoed back
    adapter: str  # "" for the base model
    messages: list[dict]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


def model_adapter(backend: ChatBackend, model: str) -> str:
    """The adapter a model id names ("" for the base model), or a 404 model_not_found."""
    if model in (backend.base_name, *adapters.BASE_NAMES):
        return ""
    if model in backend.list_adapters():
        return model
    raise RequestError(404, f"Unknown model {model!r}. Available: {', '.join(model_ids(backend))} "
                            "(or \"base\" for the base model).", "model", "model_not_found")


def model_ids(backend: ChatBackend) -> list[str]:
    """The base model's id, then every adapter on disk (read again on every call)."""
    return [backend.base_name, *backend.list_adapters()]


def _content(value: object, i: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise RequestError(400, f"messages[{i}].content must be a string or a list of text parts "
                            "(images, audio and tool calls are not supported)", f"messages[{i}].content")


def _messages(raw: object) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}] must be an object with role system, developer, user or "
                                    "assistant (tool messages are not supported)", f"messages[{i}].role")
        messages.append({"role": ROLES[item["role"]], "content": _content(item.get("content"), i)})
    try:
        return normalize_messages(messages)
    except UserError as exc:
        raise RequestError(400, str(exc), "messages") from None


def _max_tokens(body: dict, limit: int) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = get_field(body, name, int, min(DEFAULT_MAX_TOKENS, limit))
    if not 1 <= value <= limit:
        raise RequestError(400, f"{name} must be between 1 and {limit}, got {value}", name)
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 0 < len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(400, "stop must be a non-empty string or a list of up to 4 of them", "stop")
    return stops


def _refuse_unsupported(body: dict) -> None:
    n = get_field(body, "n", int, 1)
    if n != 1:
        raise RequestError(400, f"n={n} is not supported: this server returns one choice per request; "
                                "send several requests instead", "n")
    for name, what in UNSUPPORTED.items():
        if body.get(name):
            raise RequestError(400, f"{what} is not supported by this server", name)


def parse_chat_request(body: dict, backend: ChatBackend) -> ChatRequest:
    """Validate a chat-completions body; every problem becomes a 4xx that names the field."""
    _refuse_unsupported(body)
    model = get_field(body, "model", str, backend.base_name)
    adapter = model_adapter(backend, model)
    messages = _messages(body.get("messages"))
    temperature = get_field(body, "temperature", float, 1.0)
    if not 0 <= temperature <= 2:
        raise RequestError(400, f"temperature must be between 0 and 2, got {temperature}", "temperature")
    try:
        params = GenerationParams(
            max_new_tokens=_max_tokens(body, backend.settings.max_new_tokens_limit), temperature=temperature,
            top_p=get_field(body, "top_p", float, 1.0), top_k=0, stop=_stop(body),
            seed=get_field(body, "seed", int))
    except UserError as exc:
        raise RequestError(400, str(exc)) from None
    options = get_field(body, "stream_options", dict, {})
    return ChatRequest(model=model, adapter=adapter, messages=messages, params=params,
                       stream=get_field(body, "stream", bool, False),
                       include_usage=bool(get_field(options, "include_usage", bool, False)))


def finish_reason(stream: ReplyStream) -> str:
    """OpenAI's finish_reason: "length" when max_tokens ran out, else "stop"."""
    return "length" if stream.finish_reason == "length" else "stop"


def usage(stream: ReplyStream) -> dict:
    """Token counts of a finished generation."""
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}


def completion(chat: ChatRequest, text: str, stream: ReplyStream) -> dict:
    """A chat.completion object for a finished reply."""
    return {"id": chat.id, "object": "chat.completion", "created": chat.created, "model": chat.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish_reason(stream)}],
            "usage": usage(stream)}


def chunk_event(chat: ChatRequest, delta: dict | None, finish: str | None = None,
                usage_counts: dict | None = None) -> str:
    """One SSE `data:` line holding a chat.completion.chunk (delta None = the final usage-only chunk)."""
    chunk = {"id": chat.id, "object": "chat.completion.chunk", "created": chat.created, "model": chat.model,
             "system_fingerprint": None,
             "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": finish}]}
    if chat.include_usage:
        chunk["usage"] = usage_counts
    return sse(chunk)


def sse(data: dict | str) -> str:
    """A server-sent event carrying `data` (JSON unless it is already a string such as [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
