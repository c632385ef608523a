"""OpenAI-compatible /v1 routes: models (base + every adapter) and chat completions, streamed or not, with
tool calls (/v1/completions is in completions.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llama_space.inference.tools import ToolCallFailed, ToolReplyFilter
from llama_space.web.error_boundary import RequestError, failure, openai_body
from llama_space.web.routes import openai_schema as schema
from llama_space.web.routes.common import GenerationResponse, GenerationRunner, read_json_object
from llama_space.web.routes.openai_common import bearer_check, error_response, sse

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend, ReplyStream
    from llama_space.inference.tools import ToolCall


def _model_card(model_id: str, created: int, context: int) -> dict:
    """OpenAI's model object, with vLLM's max_model_len: the tokens one request may use, prompt plus reply."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llama-space", "max_model_len": context}


def _tool_call_failed(exc: ToolCallFailed) -> RequestError:
    """The model, not the client, missed tool_choice: a server error that says so."""
    return RequestError(500, str(exc), "tool_choice", "tool_call_failed")




async def _events(chat: schema.ChatRequest, stream: ReplyStream, runner: GenerationRunner
                  ) -> AsyncIterator[str]:
    """The SSE body: a role chunk, content (or tool call) chunks, a finish chunk, optional usage, then [DONE]."""
    yield schema.chunk_event(chat, {"role": "assistant", "content": ""})
    held = ToolReplyFilter(chat.tools) if chat.tools is not None else None
    calls: list[ToolCall] = []
    try:
        async for text in runner.chunks(stream):
            text = held.feed(text) if held is not None else text
            if text:
                yield schema.chunk_event(chat, {"content": text})
        if held is not None:
            text, calls = held.finish()
            for delta in [{"content": text}] if text else schema.tool_call_deltas(calls):
                yield schema.chunk_event(chat, delta)
    except Exception as exc:  # noqa: BLE001 - headers are sent: an error event, as the SDK reads stream errors
        exc = _tool_call_failed(exc) if isinstance(exc, ToolCallFailed) else exc
        yield sse(openai_body(failure(exc, "streaming a chat completion")))
        yield sse("[DONE]")
        return
    yield schema.chunk_event(chat, {}, schema.finish_reason(stream, calls))
    if chat.include_usage:
        yield schema.chunk_event(chat, None, usage_counts=schema.usage(stream))
    yield sse("[DONE]")


def openai_router(backend: ChatBackend, runner: GenerationRunner, api_key: str = "") -> APIRouter:
    """The router holding GET /v1/models[/{id}] and POST /v1/chat/completions (bearer `api_key` if set)."""
    router = APIRouter(prefix="/v1")
    started = int(time.time())
    authorize = bearer_check(api_key)

    @router.get("/models", include_in_schema=False)
    async def list_models(request: Request) -> JSONResponse:
        """Every model id a request may name: the base model and each adapter on disk."""
        try:
            authorize(request)
            ids = schema.model_ids(backend)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return error_response(exc, "listing models")
        return JSONResponse({"object": "list", "data": [_model_card(i, started, backend.context_window) for i in ids]})

    @router.get("/models/{model_id:path}", include_in_schema=False)
    async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
        """One model card, or 404 model_not_found."""
        try:
            authorize(request)
            schema.model_adapter(backend, model_id)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return error_response(exc, "looking up a model")
        return JSONResponse(_model_card(model_id, started, backend.context_window))

    @router.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request) -> Response:
        """A chat completion: JSON, or server-sent chat.completion.chunk events when stream is true."""
        calls = None
        try:
            authorize(request)
            chat = schema.parse_chat_request(await read_json_object(request), backend)
            stream = await runner.open(chat.messages, chat.params, chat.adapter, chat.tools)
            if chat.stream:
                return GenerationResponse(_events(chat, stream, runner), stream, runner, "text/event-stream")
            text = await runner.complete(stream, request)
            if chat.tools is not None:
                held = ToolReplyFilter(chat.tools)
                text = held.feed(text)
                rest, calls = held.finish()
                text += rest
        except ToolCallFailed as exc:
            return error_response(_tool_call_failed(exc), "answering a chat completion")
        except Exception as exc:  # noqa: BLE001 - the boundary
            return error_response(exc, "answering a chat completion")
        return JSONResponse(schema.completion(chat, text, stream, calls))

    return router
