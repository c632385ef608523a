"""The one error boundary: how any failure reaches each surface (UI, Gradio API, REST, /v1), before and
during a stream.

A UserError's text is shown as is (the UI's in the visitor's language: web/core_messages.py), with the status
its kind says (400, 404 not found, 429 queue full, 502 chat backend unusable); anything else is logged with its
traceback here and the client gets a generic message: no paths, tracebacks or CUDA messages ever reach a client.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

from llama_space.errors import BackendError, NotFoundError, QueueFullError, UserError

log = logging.getLogger(__name__)

SERVER_FAILED = "The server failed while {what}; the server log has the details. Try again in a moment."
OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                404: "invalid_request_error", 429: "rate_limit_error"}


class RequestError(Exception):
    """A request refused by a route: HTTP status, a message that says what to fix, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class Failure:
    """What a client is told about a failure."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None


def failure(exc: BaseException, what: str = "answering the request") -> Failure:
    """The client-safe form of `exc`; an unexpected one is logged (with its traceback) and hidden."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:  # raised inside a task group
        exc = exc.exceptions[0]
    if isinstance(exc, RequestError):
        return Failure(exc.status, exc.message, exc.param, exc.code)
    if isinstance(exc, QueueFullError):
        return Failure(429, str(exc), code="queue_full")
    if isinstance(exc, NotFoundError):
        return Failure(404, str(exc), code="not_found")
    if isinstance(exc, BackendError):
        return Failure(502, str(exc), code="backend_error")
    if isinstance(exc, UserError):
        return Failure(400, str(exc))
    log.error("Failed while %s", what, exc_info=exc)
    return Failure(500, SERVER_FAILED.format(what=what), code="server_error")


# ---- REST (POST /): {"error", "status"} -----------------------------------------------------------------
def rest_body(fail: Failure) -> dict:
    return {"error": fail.message, "status": fail.status}


# ---- OpenAI (/v1): {"error": {"message", "type", "param", "code"}} --------------------------------------
def openai_body(fail: Failure) -> dict:
    kind = OPENAI_TYPES.get(fail.status, "server_error" if fail.status >= 500 else "invalid_request_error")
    return {"error": {"message": fail.message, "type": kind, "param": fail.param, "code": fail.code}}


# ---- Gradio (UI and named endpoints): gr.Error ----------------------------------------------------------
def gradio_error(exc: BaseException, what: str = "answering the request"):
    """The gr.Error to raise for `exc`, in the language of the request (a gr.Error raised on purpose passes through
    unchanged: its text is the UI's own, translated already)."""
    import gradio as gr

    from llama_space.web.i18n import core_text

    if isinstance(exc, gr.Error):
        return exc
    return gr.Error(core_text(failure(exc, what).message))


def user_facing(fn: Callable, what: str = "") -> Callable:
    """`fn` (a function or a generator function) with every exception turned into a gr.Error by the rules
    above; its signature and type hints are kept, so gr.api and view_api() still see its real parameters."""
    what = what or f"running {fn.__name__.strip('_').replace('_', ' ')}"
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the boundary: every failure leaves as a gr.Error
                raise gradio_error(exc, what) from None
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure leaves as a gr.Error
            raise gradio_error(exc, what) from None
    return function
