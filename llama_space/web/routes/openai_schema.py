"""The OpenAI chat-completions wire format: validating a request and shaping replies, errors and stream chunks."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import check_ending
from llama_space.inference.tools import ToolUse, assistant_tool_calls, tool_choice, validate_tools
from llama_space.web.error_boundary import RequestError
from llama_space.web.routes.common import MAX_DEPTH, get_field, refuse_unusable
from llama_space.web.routes.openai_common import sampling_params, sse

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend, ReplyStream
    from llama_space.inference.tools import ToolCall

DEFAULT_MAX_TOKENS = 512
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# Request fields whose meaning we cannot honour: refusing them beats silently answering something else.
UNSUPPORTED = {"functions": "function calling through the deprecated `functions` (send `tools`)",
               "function_call": "the deprecated `function_call` (send `tool_choice`)", "logprobs": "logprobs",
               "top_logprobs": "logprobs", "audio": "audio output", "prediction": "predicted outputs"}


@dataclass
class ChatRequest:
    """A validated POST /v1/chat/completions body."""

    model: str  # the id the client asked for, echoed back
    adapter: str  # "" for the base model
    messages: list[dict]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    tools: ToolUse | None = None  # None: no tools offered, or tool_choice "none"
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


def _content(value: object, i: int, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise RequestError(400, f"messages[{i}].content must be a string or a list of text parts "
                            "(images and audio are not supported)", f"messages[{i}].content")


def _message(item: object, i: int) -> dict:
    """One OpenAI message in the form chat templates read (tool calls with their arguments as objects)."""
    if not isinstance(item, dict) or item.get("role") not in ROLES:
        raise RequestError(400, f"messages[{i}] must be an object with role system, developer, user, assistant "
                                "or tool", f"messages[{i}].role")
    role = ROLES[item["role"]]
    calls = item.get("tool_calls") if role == "assistant" else None
    message = {"role": role, "content": _content(item.get("content"), i, optional=bool(calls))}
    try:
        if calls:
            message["tool_calls"] = assistant_tool_calls(calls, i)
            # The arguments were a JSON string inside the body: their nesting is checked only now.
            refuse_unusable(message["tool_calls"], f"messages[{i}].tool_calls")
        if role == "tool":
            message["tool_call_id"] = get_field(item, "tool_call_id", str, "")
    except UserError as exc:
        raise RequestError(400, str(exc), f"messages[{i}]") from None
    except RecursionError:  # json.loads of arguments nested deeper than Python's stack
        raise RequestError(400, f"messages[{i}].tool_calls is nested too deeply (more than {MAX_DEPTH} levels) "
                                "to be a request.", f"messages[{i}]") from None
    return message


def _messages(raw: object) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    messages = [_message(item, i) for i, item in enumerate(raw)]
    try:
        check_ending(messages)
    except UserError as exc:
        raise RequestError(400, str(exc), "messages") from None
    return messages


def _tools(body: dict) -> ToolUse | None:
    """The tools offered and tool_choice; None when the reply may not call any."""
    try:
        tools = validate_tools(body["tools"]) if body.get("tools") is not None else None
    except UserError as exc:
        raise RequestError(400, str(exc), "tools") from None
    try:
        choice = tool_choice(body.get("tool_choice"), tools)
        return None if choice is None else ToolUse(tools, choice)
    except UserError as exc:
        raise RequestError(400, str(exc), "tool_choice") from None


def refuse_unsupported(body: dict, unsupported: dict[str, str]) -> None:
    """A 400 for n other than 1 and for any field in `unsupported` that is set."""
    n = get_field(body, "n", int, 1)
    if n != 1:
        raise RequestError(400, f"n={n} is not supported: this server returns one choice per request; "
                                "send several requests instead", "n")
    for name, what in unsupported.items():
        if body.get(name):
            raise RequestError(400, f"{what} is not supported by this server", name)


def parse_chat_request(body: dict, backend: ChatBackend) -> ChatRequest:
    """Validate a chat-completions body; every problem becomes a 4xx that names the field."""
    refuse_unsupported(body, UNSUPPORTED)
    if body.get("parallel_tool_calls") is not None:
        get_field(body, "parallel_tool_calls", bool)  # accepted: the model decides how many calls it makes
    model = get_field(body, "model", str, backend.base_name)
    adapter = model_adapter(backend, model)
    messages = _messages(body.get("messages"))
    params = sampling_params(body, backend.settings.max_new_tokens_limit, DEFAULT_MAX_TOKENS)
    options = get_field(body, "stream_options", dict, {})
    return ChatRequest(model=model, adapter=adapter, messages=messages, params=params,
                       stream=get_field(body, "stream", bool, False),
                       include_usage=bool(get_field(options, "include_usage", bool, False)), tools=_tools(body))


def finish_reason(stream: ReplyStream, calls: list[ToolCall] | None = None) -> str:
    """OpenAI's finish_reason: "tool_calls" for a reply that calls tools, "length" when max_tokens ran out,
    else "stop"."""
    if calls:
        return "tool_calls"
    return "length" if stream.finish_reason == "length" else "stop"


def usage(stream: ReplyStream) -> dict:
    """Token counts of a finished generation."""
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}


def completion(chat: ChatRequest, text: str, stream: ReplyStream, calls: list[ToolCall] | None = None) -> dict:
    """A chat.completion object for a finished reply (`calls`: the tools it calls instead of text)."""
    message = {"role": "assistant", "content": None if calls else text, "refusal": None}
    if calls:
        message["tool_calls"] = [call.openai() for call in calls]
    return {"id": chat.id, "object": "chat.completion", "created": chat.created, "model": chat.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason(stream, calls)}],
            "usage": usage(stream)}


def tool_call_deltas(calls: list[ToolCall]) -> list[dict]:
    """The deltas that stream `calls` as OpenAI does: per call, one with its id and name, then its arguments."""
    deltas = []
    for index, call in enumerate(calls):
        deltas.append({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                       "function": {"name": call.name, "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
    return deltas


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
