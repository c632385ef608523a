"""OpenAI's legacy POST /v1/completions: raw text continued as it is (no chat template), streamed or not.

A list of prompts and n > 1 become one reply stream per choice, all opened at once so they decode together
in the batch engine; choice i*n + j is prompt i's j-th completion, as in OpenAI's API.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llama_space.web.error_boundary import RequestError, failure, openai_body
from llama_space.web.routes.common import GenerationResponse, GenerationRunner, get_field, read_json_object
from llama_space.web.routes.openai_common import bearer_check, error_response, sampling_params, sse
from llama_space.web.routes.openai_schema import model_adapter

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend, ReplyStream
    from llama_space.inference.generation_params import GenerationParams

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_CHOICES = 16  # prompts times n in one request
UNSUPPORTED = {"logprobs": "logprobs", "suffix": "suffix (text insertion)"}


@dataclass
class CompletionRequest:
    """A validated POST /v1/completions body."""

    model: str  # the id the client asked for, echoed back
    adapter: str  # "" for the base model
    prompts: list[str]
    params: GenerationParams
    n: int = 1
    echo: bool = False  # the reply text starts with its prompt
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def choices(self) -> list[str]:
        """The prompt of each choice, in choice order."""
        return [prompt for prompt in self.prompts for _ in range(self.n)]


def _prompts(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        return raw
    raise RequestError(400, "prompt must be a string or a non-empty list of strings (token-id prompts are not "
                            "supported)", "prompt")


def parse_completion_request(body: dict, backend: ChatBackend) -> CompletionRequest:
    """Validate a completions body; every problem becomes a 4xx that names the field."""
    for name, what in UNSUPPORTED.items():
        if body.get(name) is not None and body.get(name) != "":
            raise RequestError(400, f"{what} is not supported by this server", name)
    model = get_field(body, "model", str, backend.base_name)
    adapter = model_adapter(backend, model)
    if "prompt" not in body:
        raise RequestError(400, "prompt is required", "prompt")
    prompts = _prompts(body["prompt"])
    n = get_field(body, "n", int, 1)
    if not 1 <= n <= MAX_CHOICES or len(prompts) * n > MAX_CHOICES:
        raise RequestError(400, f"prompts times n must be at most {MAX_CHOICES}, got {len(prompts)} x {n}", "n")
    best_of = get_field(body, "best_of", int, n)
    if best_of != n:
        raise RequestError(400, "best_of other than n is not supported: it needs logprobs", "best_of")
    params = sampling_params(body, backend.settings.max_new_tokens_limit, DEFAULT_MAX_TOKENS)
    options = get_field(body, "stream_options", dict, {})
    return CompletionRequest(model=model, adapter=adapter, prompts=prompts, params=params, n=n,
                             echo=get_field(body, "echo", bool, False), stream=get_field(body, "stream", bool, False),
                             include_usage=bool(get_field(options, "include_usage", bool, False)))


class _Replies:
    """The reply streams of one request, closed together."""

    def __init__(self, streams: list[ReplyStream]) -> None:
        self.streams = streams

    def close(self) -> None:
        for stream in self.streams:
            stream.close()

    def usage(self) -> dict:
        prompt = sum(s.prompt_tokens for s in self.streams)
        generated = sum(s.completion_tokens for s in self.streams)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _finish(stream: ReplyStream) -> str:
    return "length" if stream.finish_reason == "length" else "stop"


def _choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _body(request: CompletionRequest, choices: list[dict], usage: dict | None = None) -> dict:
    body = {"id": request.id, "object": "text_completion", "created": request.created, "model": request.model,
            "system_fingerprint": None, "choices": choices}
    return body | ({"usage": usage} if usage is not None else {})


async def _open_all(request: CompletionRequest, runner: GenerationRunner) -> _Replies:
    """One stream per choice; if any cannot start (a full queue, a prompt too long), none runs."""
    streams: list[ReplyStream] = []
    try:
        for prompt in request.choices:
            streams.append(await runner.open(prompt, request.params, request.adapter))
    except BaseException:
        for stream in streams:
            await runner.close(stream)
        raise
    return _Replies(streams)


async def _events(request: CompletionRequest, replies: _Replies, runner: GenerationRunner) -> AsyncIterator[str]:
    """The SSE body: each choice's text chunks and finish chunk in turn, optional usage, then [DONE]."""
    try:
        for index, (prompt, stream) in enumerate(zip(request.choices, replies.streams)):
            if request.echo:
                yield sse(_body(request, [_choice(index, prompt, None)]))
            async for text in runner.chunks(stream):
                if text:
                    yield sse(_body(request, [_choice(index, text, None)]))
            yield sse(_body(request, [_choice(index, "", _finish(stream))]))
    except Exception as exc:  # noqa: BLE001 - headers are sent: an error event, as the SDK reads stream errors
        yield sse(openai_body(failure(exc, "streaming a completion")))
        yield sse("[DONE]")
        return
    if request.include_usage:
        yield sse(_body(request, [], replies.usage()))
    yield sse("[DONE]")


def completions_router(backend: ChatBackend, runner: GenerationRunner, api_key: str = "") -> APIRouter:
    """The router holding POST /v1/completions (bearer `api_key` if set)."""
    router = APIRouter(prefix="/v1")
    authorize = bearer_check(api_key)

    @router.post("/completions", include_in_schema=False)
    async def completions(http: Request) -> Response:
        """A text completion: JSON, or server-sent text_completion events when stream is true."""
        try:
            authorize(http)
            request = parse_completion_request(await read_json_object(http), backend)
            replies = await _open_all(request, runner)
            if request.stream:
                return GenerationResponse(_events(request, replies, runner), replies, runner, "text/event-stream")
            try:
                texts = [await runner.complete(stream, http) for stream in replies.streams]
            finally:
                await runner.close(replies)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return error_response(exc, "answering a completion")
        choices = [_choice(i, (prompt if request.echo else "") + text, _finish(stream))
                   for i, (prompt, text, stream) in enumerate(zip(request.choices, texts, replies.streams))]
        return JSONResponse(_body(request, choices, replies.usage()))

    return router
