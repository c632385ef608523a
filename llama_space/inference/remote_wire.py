"""What goes over the wire to a remote OpenAI-compatible server: the request body, and reading its answers
(JSON bodies, server-sent event streams, error replies) into clear errors.

Nothing the remote sends reaches a client beyond a short message: no HTML pages, no exception text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import httpx

from llama_space.errors import BackendError, QueueFullError, UserError
from llama_space.inference.generation_params import GenerationParams

log = logging.getLogger(__name__)

MAX_MESSAGE = 300  # characters of a remote's own error message passed on
CHECK_URL = "check LLAMA_SPACE_BACKEND_URL points at its /v1 API."
NOT_JSON = "The chat backend at {url} answered something that is not JSON ({kind}); " + CHECK_URL
BAD_CHUNK = "The chat backend at {url} sent a stream chunk that is not chat-completion JSON; " + CHECK_URL
CUT_OFF = "The chat backend at {url} stopped answering mid-reply; try again in a moment."


def request_body(model: str, messages: list[dict] | str, params: GenerationParams) -> dict:
    """The chat-completions body for `params` (a completions body for a string prompt); top_k and
    repetition_penalty are vLLM's extensions."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p}
    body |= {"prompt": messages} if isinstance(messages, str) else {"messages": messages}
    return body | _sampling_fields(params)


def _sampling_fields(params: GenerationParams) -> dict:
    """The optional sampling fields `params` sets, passed on as the remote names them."""
    body: dict = {}
    if params.stop:
        body["stop"] = params.stop
    if params.seed is not None:
        body["seed"] = params.seed
    if not params.greedy and params.top_k:
        body["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias.items()}
    if params.response_format is not None:
        body["response_format"] = params.response_format
    return body


def choice_text(choice: dict) -> str:
    """The text of one streamed choice: a chat chunk's delta.content or a completions chunk's text."""
    if "text" in choice:
        return choice.get("text") or ""
    return (choice.get("delta") or {}).get("content") or ""


def unreachable(exc: httpx.HTTPError, url: str) -> BackendError:
    """The error for a connection that failed before an answer came; the details go to the log only."""
    log.warning("Chat backend %s unreachable: %s: %s", url, type(exc).__name__, exc)
    if isinstance(exc, httpx.TimeoutException):
        reason = "it did not answer in time"
    elif isinstance(exc, httpx.ConnectError):
        reason = "nothing accepted the connection"
    else:
        reason = "the connection failed"
    return BackendError(f"The chat backend at {url} is unreachable ({reason}); "
                        "check that it runs and LLAMA_SPACE_BACKEND_URL.")


def cut_off(exc: BaseException, url: str) -> BackendError:
    """The error for a reply that broke off; the details go to the log only."""
    log.warning("Chat backend %s broke off a reply: %s: %s", url, type(exc).__name__, exc)
    return BackendError(CUT_OFF.format(url=url))


def media_type(response: httpx.Response) -> str:
    """The answer's media type, reduced to characters a media type has (it is the remote's text)."""
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return re.sub(r"[^a-z0-9/.+-]", "", kind)[:60] or "no content type"


def read_json(response: httpx.Response, url: str) -> object:
    """The JSON body of a read response, or a BackendError saying it is something else."""
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        raise BackendError(NOT_JSON.format(url=url, kind=media_type(response))) from None


def model_cards(payload: object, url: str) -> list[dict]:
    """The model cards of a GET /models answer (each with a string id); BackendError when there are none."""
    data = payload.get("data") if isinstance(payload, dict) else None
    cards = [card for card in (data if isinstance(data, list) else [])
             if isinstance(card, dict) and isinstance(card.get("id"), str)]
    if not cards:
        raise BackendError(f"The chat backend at {url} lists no models; " + CHECK_URL)
    return cards


def remote_error(response: httpx.Response, url: str) -> UserError:
    """The error for a read non-2xx answer: the remote's own message when it sent JSON (429 as the shared
    queue's QueueFullError, 5xx as BackendError), else a BackendError that says what came instead."""
    status, message = response.status_code, _json_message(response.content)
    if status == 429:
        return QueueFullError(message or f"The chat backend at {url} is busy; try again in a moment.")
    if message is None:
        return BackendError(f"The chat backend at {url} answered HTTP {status} with something that is not JSON "
                            f"({media_type(response)}): it may be down behind a proxy, or " + CHECK_URL)
    if status in (401, 403):  # this app's key, not the client's: telling the client "wrong key" misleads it
        return BackendError(f"The chat backend at {url} refused this app's key (HTTP {status}: {message}); "
                            "check LLAMA_SPACE_BACKEND_API_KEY.")
    if status >= 500:
        return BackendError(f"The chat backend at {url} failed (HTTP {status}): {message}")
    return UserError(message)


def check_event_stream(response: httpx.Response, url: str) -> None:
    """Raise a BackendError (closing `response`) unless it is a server-sent event stream; a missing content
    type passes, for servers that send none."""
    kind = media_type(response)
    if kind in ("text/event-stream", "no content type"):
        return
    try:
        body = response.read()
    except httpx.HTTPError:
        body = b""  # its kind alone is reason enough to refuse it
    finally:
        response.close()
    if not kind.endswith("json"):
        raise BackendError(NOT_JSON.format(url=url, kind=kind))
    message = _json_message(body)
    if message:
        raise BackendError(f"The chat backend at {url} failed: {message}")
    raise BackendError(f"The chat backend at {url} answered one JSON object, not the event stream asked for; "
                       + CHECK_URL)


def sse_chunks(lines: Iterator[str], url: str) -> Iterator[dict]:
    """The JSON chunks of a server-sent event stream up to [DONE]; a bad chunk, an error event or a stream
    that ends without [DONE] (the remote went away) raises BackendError."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments (keep-alives), event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            raise BackendError(BAD_CHUNK.format(url=url)) from None
        if not _well_formed(chunk):
            raise BackendError(BAD_CHUNK.format(url=url))
        if "error" in chunk:
            raise BackendError(f"The chat backend at {url} failed while streaming: "
                               f"{message_of(chunk) or 'no reason given'}")
        yield chunk
    raise BackendError(CUT_OFF.format(url=url))  # no [DONE]: the remote went away between two events


def _well_formed(chunk: object) -> bool:
    """Whether `chunk` has the shape of a chat.completion.chunk (or an error event) where RemoteStream reads it."""
    if not isinstance(chunk, dict):
        return False
    choices, usage = chunk.get("choices") or [], chunk.get("usage") or {}
    if not isinstance(choices, list) or not isinstance(usage, dict):
        return False
    deltas = [(choice.get("delta") or {}) if isinstance(choice, dict) else None for choice in choices]
    return (all(isinstance(d, dict) and isinstance(d.get("content") or "", str) for d in deltas)
            and all(isinstance(choice.get("text") or "", str) for choice in choices)
            and all(isinstance(usage.get(key) or 0, int) for key in ("prompt_tokens", "completion_tokens")))


def message_of(payload: object) -> str | None:
    """The message in OpenAI's {"error": {"message"}}, vLLM's {"message"} or FastAPI's {"detail"} shapes."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:MAX_MESSAGE]
    for key in ("message", "detail", "error"):
        if payload.get(key):
            return str(payload[key])[:MAX_MESSAGE]
    return None


def _json_message(content: bytes) -> str | None:
    """The error message in a JSON body, None when it is not JSON or carries none."""
    try:
        return message_of(json.loads(content))
    except (ValueError, RecursionError):
        return None
