"""POST / : the original tutorial's REST contract, {"prompt": ...} -> {"response", "status", "time"}."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.web.error_boundary import RequestError, failure, rest_body
from llama_space.web.routes.common import GenerationRunner, get_field, read_json_object

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend


FIELDS = {"prompt": str, "system": str, "adapter": str, "max_new_tokens": int, "temperature": float,
          "top_p": float}


def _error(exc: BaseException) -> JSONResponse:
    fail = failure(exc, "answering POST /")
    return JSONResponse(rest_body(fail), status_code=fail.status)


def _parse(body: dict, backend: ChatBackend) -> tuple[list[dict], GenerationParams, str]:
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"Unknown field(s) {', '.join(unknown)}; accepted: {', '.join(FIELDS)}.")
    prompt = get_field(body, "prompt", str, "")
    if not prompt.strip():
        raise RequestError(400, 'prompt is required and must not be empty, e.g. {"prompt": "Hello"}', "prompt")
    defaults = GenerationParams()
    params = GenerationParams(
        max_new_tokens=get_field(body, "max_new_tokens", int, defaults.max_new_tokens),
        temperature=get_field(body, "temperature", float, defaults.temperature),
        top_p=get_field(body, "top_p", float, defaults.top_p))
    messages = normalize_messages([], prompt, get_field(body, "system", str, ""))
    return messages, params, backend.check_adapter(get_field(body, "adapter", str, ""))


def rest_router(backend: ChatBackend, runner: GenerationRunner) -> APIRouter:
    """The router holding POST / (GET / stays Gradio's page)."""
    router = APIRouter()

    @router.post("/", include_in_schema=False)
    async def generate(request: Request) -> JSONResponse:
        """Answer one prompt with the whole reply."""
        try:
            messages, params, adapter = _parse(await read_json_object(request), backend)
            stream = await runner.open(messages, params, adapter)
            text = await runner.complete(stream, request)
        except Exception as exc:  # noqa: BLE001 - the boundary
            return _error(exc)
        return JSONResponse({"response": text, "status": 200, "time": time.strftime("%Y-%m-%d %H:%M:%S")})

    return router
