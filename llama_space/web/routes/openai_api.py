"""OpenAI-compatible /v1 routes: models (base + every adapter) and chat completions, streamed or not."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llama_space.web.routes import openai_schema as schema
from llama_space.web.errors import RequestError, failure, openai_body
from llama_space.web.routes.common import GenerationRunner, GenerationResponse, read_json_object

if TYPE_CHECKING:
    from llama_space.inference.backend import ReplyStream
    from llama_space.inference.backend import ChatBackend



def _error(exc: BaseException, what: str) -> JSONResponse:
    """OpenAI's error response for `exc` (web/errors.py decides status and text)."""
    fail = failure(exc, what)
    headers = {"WWW-Authenticate": "Bearer"} if fail.status == 401 else None
    return JSONResponse(openai_body(fail), status_code=fail.status, headers=headers)


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llama-space"}


async def _events(chat: schema.ChatRequest, stream: ReplyStream, runner: GenerationRunner
                  ) -> AsyncIterator[str]:
    """The SSE body: a role chunk, content chunks, a finish chunk, optional usage, then [DONE]."""
    yield schema.chunk_event(chat, {"role": "assistant", "content": ""})
    try:
        async for text in runner.chunks(stream):
            if text:
                yield schema.chunk_event(chat, {"content": text})
    except Exception as exc:  # noqa: BLE001 - headers are sent: an error event, as the SDK reads stream errors
        yield schema.sse(openai_body(failure(exc, "streaming a chat completion")))
        yield schema.sse("[DONE]")
        return
    yield schema.chunk_event(chat, {}, schema.finish_reason(stream))
    if chat.include_usage:
        yield schema.chunk_event(chat, None, usage_counts=schema.usage(stream))
    yield schema.sse("[DONE]")


def openai_router(backend: ChatBackend, runner: GenerationRunner, api_key: str = "") -> APIRouter:
    """The router holding GET /v1/models[/{id}] and POST /v1/chat/completions (bearer `api_key` if set)."""
    router = APIRouter(prefix="/v1")
    started = int(time.time())

    def authorize(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise RequestError(401, "Missing API key: send the header 'Authorization: Bearer <key>'.",
                               code="invalid_api_key")
        if not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise RequestError(401, "Incorrect API key provided.", code="invalid_api_key")

    @router.get("/models", include_in_schema=False)
    async def list_models(request: Request) -> JSONResponse:
        """Every model id a request may name: the base model and each adapter on disk."""
        try:
            authorize(request)
            ids = schema.model_ids(backend)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return _error(exc, "listing models")
        return JSONResponse({"object": "list", "data": [_model_card(i, started) for i in ids]})

    @router.get("/models/{model_id:path}", include_in_schema=False)
    async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
        """One model card, or 404 model_not_found."""
        try:
            authorize(request)
            schema.model_adapter(backend, model_id)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return _error(exc, "looking up a model")
        return JSONResponse(_model_card(model_id, started))

    @router.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request) -> Response:
        """A chat completion: JSON, or server-sent chat.completion.chunk events when stream is true."""
        try:
            authorize(request)
            chat = schema.parse_chat_request(await read_json_object(request), backend)
            stream = await runner.open(chat.messages, chat.params, chat.adapter)
            if chat.stream:
                return GenerationResponse(_events(chat, stream, runner), stream, runner, "text/event-stream")
            text = await runner.complete(stream, request)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return _error(exc, "answering a chat completion")
        return JSONResponse(schema.completion(chat, text, stream))

    return router
