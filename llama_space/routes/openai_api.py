"""OpenAI-compatible /v1 routes: models (base + every adapter) and chat completions, streamed or not."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llama_space.routes import openai_schema as schema
from llama_space.routes.common import GenerationRunner, GenerationResponse, RequestError, read_json_object

if TYPE_CHECKING:
    from llama_space.generation import GenerationStream
    from llama_space.model_manager import ModelManager

log = logging.getLogger(__name__)


def _error(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(schema.error_body(exc), status_code=exc.status, headers=headers)


def _server_error(what: str) -> RequestError:
    log.exception("%s failed", what)
    return RequestError(500, "Generation failed because of a server error; see the server log.")


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llama-space"}


async def _events(chat: schema.ChatRequest, stream: GenerationStream, runner: GenerationRunner
                  ) -> AsyncIterator[str]:
    """The SSE body: a role chunk, content chunks, a finish chunk, optional usage, then [DONE]."""
    yield schema.chunk_event(chat, {"role": "assistant", "content": ""})
    try:
        async for text in runner.chunks(stream):
            if text:
                yield schema.chunk_event(chat, {"content": text})
    except Exception:  # headers are sent already: report it the way the SDK reads stream errors
        yield schema.sse(schema.error_body(_server_error("Streaming chat completion")))
        return
    yield schema.chunk_event(chat, {}, schema.finish_reason(stream))
    if chat.include_usage:
        yield schema.chunk_event(chat, None, usage_counts=schema.usage(stream))
    yield schema.sse("[DONE]")


def openai_router(manager: ModelManager, runner: GenerationRunner, api_key: str = "") -> APIRouter:
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
        except RequestError as exc:
            return _error(exc)
        ids = schema.model_ids(manager)
        return JSONResponse({"object": "list", "data": [_model_card(i, started) for i in ids]})

    @router.get("/models/{model_id:path}", include_in_schema=False)
    async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
        """One model card, or 404 model_not_found."""
        try:
            authorize(request)
            schema.model_adapter(manager, model_id)
        except RequestError as exc:
            return _error(exc)
        return JSONResponse(_model_card(model_id, started))

    @router.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request) -> Response:
        """A chat completion: JSON, or server-sent chat.completion.chunk events when stream is true."""
        try:
            authorize(request)
            chat = schema.parse_chat_request(await read_json_object(request), manager)
            stream = await runner.open(chat.messages, chat.params, chat.adapter)
            if chat.stream:
                return GenerationResponse(_events(chat, stream, runner), stream, runner, "text/event-stream")
            text = await runner.complete(stream, request)
        except RequestError as exc:
            return _error(exc)
        except Exception:
            return _error(_server_error("Chat completion"))
        return JSONResponse(schema.completion(chat, text, stream))

    return router
