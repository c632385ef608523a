"""What /v1/chat/completions and /v1/completions share: the bearer key, OpenAI's error response, the sampling
fields of a request and server-sent events."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from llama_space.errors import UserError
from llama_space.inference.generation_params import GenerationParams
from llama_space.web.error_boundary import RequestError, failure, openai_body
from llama_space.web.routes.common import get_field

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_TOKEN_DIGITS = 10  # no vocabulary reaches ten billion tokens


def bearer_check(api_key: str) -> Callable[[Request], None]:
    """A check that raises a 401 RequestError unless the request carries `api_key` as a bearer token."""

    def authorize(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise RequestError(401, "Missing API key: send the header 'Authorization: Bearer <key>'.",
                               code="invalid_api_key")
        if not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise RequestError(401, "Incorrect API key provided.", code="invalid_api_key")

    return authorize


def error_response(exc: BaseException, what: str) -> JSONResponse:
    """OpenAI's error response for `exc` (web/error_boundary.py decides status and text)."""
    fail = failure(exc, what)
    headers = {"WWW-Authenticate": "Bearer"} if fail.status == 401 else None
    return JSONResponse(openai_body(fail), status_code=fail.status, headers=headers)


def sse(data: dict | str) -> str:
    """A server-sent event carrying `data` (JSON unless it is already a string such as [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def max_tokens(body: dict, limit: int, default: int) -> int:
    """max_completion_tokens or max_tokens, between 1 and `limit`."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = get_field(body, name, int, min(default, limit))
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


def _logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's {"token id as a string": bias}, keyed by int."""
    raw = get_field(body, "logit_bias", dict, {})
    bias = {}
    for key, value in raw.items():
        # Digits 0-9 only: str.isdigit() also takes "²" and "٣", and int() refuses over 4300 digits.
        if not (key.isascii() and key.isdigit() and len(key) <= MAX_TOKEN_DIGITS):
            shown = key if len(key) <= 20 else f"{key[:20]}... ({len(key)} characters)"
            raise RequestError(400, f"logit_bias keys must be token ids: up to {MAX_TOKEN_DIGITS} digits 0-9, "
                                    f"got {shown!r}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"logit_bias[{key}] must be a number from -100 to 100", "logit_bias")
        bias[int(key)] = float(value)
    return bias


def _response_format(body: dict) -> dict | None:
    """response_format checked for shape; None for plain text (the default)."""
    value = get_field(body, "response_format", dict)
    if value is None or value.get("type") == "text":
        return None
    if value.get("type") not in RESPONSE_FORMATS:
        raise RequestError(400, f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}",
                           "response_format")
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise RequestError(400, "response_format json_schema needs a json_schema object", "response_format")
    return value


def sampling_params(body: dict, limit: int, default_max_tokens: int) -> GenerationParams:
    """The GenerationParams a request's sampling fields ask for; each problem is a 400 naming its field."""
    temperature = get_field(body, "temperature", float, 1.0)
    if not 0 <= temperature <= 2:
        raise RequestError(400, f"temperature must be between 0 and 2, got {temperature}", "temperature")
    fields = {"max_new_tokens": max_tokens(body, limit, default_max_tokens), "temperature": temperature,
              "top_p": get_field(body, "top_p", float, 1.0), "top_k": 0, "stop": _stop(body),
              "seed": get_field(body, "seed", int),
              "frequency_penalty": get_field(body, "frequency_penalty", float, 0.0),
              "presence_penalty": get_field(body, "presence_penalty", float, 0.0),
              "logit_bias": _logit_bias(body), "response_format": _response_format(body)}
    try:
        return GenerationParams(**fields)
    except UserError as exc:
        text = str(exc)
        param = next((name for name in fields if text.startswith(name)), None)
        raise RequestError(400, text, param) from None
