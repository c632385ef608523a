"""What the REST and OpenAI routes share: request parsing and generation off the event loop."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llama_space.web.error_boundary import RequestError

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend, ReplyStream
    from llama_space.inference.generation_params import GenerationParams
    from llama_space.inference.tools import ToolUse

log = logging.getLogger(__name__)

_KINDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
          list: "a list", dict: "an object"}
MAX_DEPTH = 64  # nesting levels a request may use; deeper is an attack on recursive code, not a request
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins every valid pair into one character


async def read_json_object(request: Request) -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"The request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "The request body is nested too deeply to be a request.") from None
    if not isinstance(data, dict):
        raise RequestError(400, "The request body must be a JSON object, e.g. {\"prompt\": \"Hello\"}")
    refuse_unusable(data)
    return data


def refuse_unusable(value: Any, where: str = "") -> None:
    """A 400 for JSON no route can use: nested deeper than MAX_DEPTH, or text holding a lone surrogate, which
    no tokenizer takes and no UTF-8 reply (not even an error echoing it) can carry. Walked without recursion."""
    stack = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError(400, f"{where or 'The request body'} is nested too deeply (more than {MAX_DEPTH} "
                                    "levels) to be a request.", where or None)
        if isinstance(item, str):
            _refuse_surrogate(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _refuse_surrogate(key, f"a key of {path or 'the body'}")
                stack.append((child, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _refuse_surrogate(text: str, where: str) -> None:
    found = None if text.isascii() else _LONE_SURROGATE.search(text)
    if found:
        raise RequestError(400, f"{where or 'The request body'} holds a lone surrogate ({found.group()!r}), which "
                                "is not a character: send each character whole (a pair such as \\ud83d\\ude00 "
                                "is one character and fine).", where or None)


def get_field(body: dict, name: str, kind: type, default: Any = None) -> Any:
    """body[name] checked to be of `kind` (JSON null or absent -> default); bool never passes for a number."""
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise RequestError(400, f"{name} must be {_KINDS[kind]}, got {json.dumps(value)[:80]}", param=name)
    return value


class GenerationRunner:
    """Runs ChatBackend generation in worker threads so the event loop never blocks on the model.

    Its own thread limiter is sized to the shared queue, so requests waiting for the model never take
    the threads Gradio needs for everything else.
    """

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend
        settings = backend.settings
        self.limiter = anyio.CapacityLimiter(settings.max_queue + settings.concurrency + 4)

    async def open(self, messages: list[dict] | str, params: GenerationParams, adapter: str,
                   tools: ToolUse | None = None) -> ReplyStream:
        """Admit the request to the shared queue and start the reply (a UserError says why it cannot); `tools`
        go to the backend only when offered."""
        opened: list[ReplyStream] = []

        def start() -> ReplyStream:
            extra = {} if tools is None else {"tools": tools}
            opened.append(self.backend.stream(messages, params, adapter, **extra))
            return opened[0]

        try:
            return await anyio.to_thread.run_sync(start, limiter=self.limiter)
        except BaseException:
            if opened:  # cancelled while waiting: the model must not run for nobody
                await self.close(opened[0])
            raise

    async def chunks(self, stream: ReplyStream) -> AsyncIterator[str]:
        """Text deltas of `stream`; if the consumer is cancelled (client gone), the model stops within a step."""
        iterator = iter(stream)
        try:
            while True:
                # abandon_on_cancel: a hang-up must not wait for the next piece of text; close() below
                # ends the generation, which also ends the abandoned next() at once.
                chunk = await anyio.to_thread.run_sync(next, iterator, None, abandon_on_cancel=True,
                                                       limiter=self.limiter)
                if chunk is None:
                    return
                yield chunk
        finally:
            await self.close(stream)

    async def complete(self, stream: ReplyStream, request: Request) -> str:
        """The whole reply; if the client hangs up first, the model stops within one decode step."""
        parts: list[str] = []
        async with anyio.create_task_group() as group:

            async def stop_on_hang_up() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                log.info("Client went away; generation stopped")
                group.cancel_scope.cancel()

            group.start_soon(stop_on_hang_up)
            async for chunk in self.chunks(stream):
                parts.append(chunk)
            group.cancel_scope.cancel()
        return "".join(parts)

    async def close(self, stream: ReplyStream) -> None:
        """Stop `stream` (within one decode step) without blocking the event loop, even when cancelled."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close, limiter=self.limiter)


class GenerationResponse(StreamingResponse):
    """A streaming response that always stops its generation when it ends, also when the client hangs up."""

    def __init__(self, content: AsyncIterator[str], stream: ReplyStream, runner: GenerationRunner,
                 media_type: str) -> None:
        super().__init__(content, media_type=media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream, self.runner = stream, runner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.runner.close(self.stream)
