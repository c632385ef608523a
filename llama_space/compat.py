"""Every use of a pinned library's private internals, in one place (gradio 6.31, transformers 5.24).

Each is something the library offers no public setting for. `tests/test_compat.py` checks that each internal is
still there in the shape used here, so an upgrade that changes one fails there first, by name.

Gradio:
- `set_queue_polling`: the queue's idle polling intervals (1 ms by default: ~1,100 wake-ups a second).
- `offer_mcp_tools` / `replace_mcp_client`: which endpoints the MCP server offers, and the client it calls
  them through (it makes one without credentials, which --auth refuses).
- `oauth_userinfo`: the Hugging Face profile Gradio's OAuth stored in a request's session.
- `defer_cors`: Gradio's own CORS layer wraps the whole app, answers every browser preflight before any middleware
  of ours runs, and echoes any Origin with credentials allowed on a non-loopback host. It steps aside for CORS the
  application configures itself (its `parent_configures_cors`), which is what the request guard and the operator's
  --allowed-origins are.
- `refuse_unknown_functions`: a call with a function index the app does not have was a 500 (a KeyError).
- `current_request`: the request whose event a callback runs for (Gradio keeps it in a context variable around
  every call and every step of a generator), so text built on the server follows the visitor's language without a
  `gr.Request` parameter on every callback.
- `LOCALE_STORE_JS`: the frontend's locale store (svelte-i18n, in the `runtime-*.js` chunk), which the language
  switch sets; Gradio otherwise takes the locale from the browser once, at load.
- `hide_internal_errors`: Gradio reports its own refusals of a request (wrong number of values, a file path that
  was never uploaded) with text holding internal class names, memory addresses and absolute server paths. Ours
  are always a gr.Error already; Gradio's own get a message that says what to fix and holds none of that.

transformers:
- `compile_on_every_device`: `generate` compiles the decode step only on accelerators unless told otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

log = logging.getLogger(__name__)

_COUNTS = re.compile(r"needed: (\d+), got: (\d+)")
REQUEST_UNFIT = ("This request does not fit the endpoint: send one value per parameter, in order, with the types "
                 "view_api() (or /gradio_api/info) lists.")


# ---- gradio ---------------------------------------------------------------------------------------------------
def set_queue_polling(demo: gr.Blocks, events_s: float, progress_s: float) -> None:
    """How often `demo`'s queue looks for waiting events and for progress updates while idle."""
    demo._queue.sleep_when_free = events_s
    demo._queue.progress_update_sleep_when_free = progress_s


def current_request():
    """The gr.Request of the event being processed, or None outside one."""
    from gradio.context import LocalContext

    return LocalContext.request.get(None)


# Sets the frontend's locale: imports the chunk that holds svelte-i18n (the same module instance the app uses) and
# sets the one writable store whose value is the page's current locale.
LOCALE_STORE_JS = """async (locale) => {
  const url = performance.getEntriesByType('resource').map((e) => e.name)
    .find((name) => /\\/assets\\/runtime-[^/]+\\.js/.test(name));
  if (!url) return false;
  const module = await import(url);
  const current = document.documentElement.lang;
  const stores = Object.values(module).filter((v) => v && typeof v.set === 'function'
    && typeof v.subscribe === 'function' && (() => { let x; v.subscribe((y) => { x = y; })(); return x === current; })());
  if (stores.length !== 1) return false;
  stores[0].set(locale);
  return true;
}"""


def offer_mcp_tools(mcp, endpoints: Iterable[str]) -> None:
    """Keep only the MCP tools backed by `endpoints` (names without the leading slash)."""
    wanted = set(endpoints)
    mcp.tool_to_endpoint = {tool: endpoint for tool, endpoint in mcp.tool_to_endpoint.items()
                            if endpoint.lstrip("/") in wanted}


def replace_mcp_client(mcp, factory: Callable[[], Any]) -> None:
    """Make the MCP server call its tools through the gradio_client `factory` returns."""
    mcp._get_or_create_client = factory


def oauth_userinfo(request) -> dict | None:
    """The OpenID userinfo Gradio's OAuth keeps in `request`'s session; None when nobody is signed in (or the app
    has no session middleware, or the session is garbled)."""
    from gradio import helpers
    from gradio import oauth as gradio_oauth

    try:
        info = gradio_oauth._get_valid_oauth_info_from_session(helpers._session_from_request(request))
    except Exception:  # noqa: BLE001 - no session middleware or a garbled session: not signed in
        return None
    return (info or {}).get("userinfo") or None


def defer_cors(app: FastAPI) -> bool:
    """Make Gradio's CORS layer in `app`'s built middleware stack pass every request on; whether it was found.
    Runs in the lifespan, once the stack is built and before the port opens."""
    from gradio.route_utils import CustomCORSMiddleware

    layer = getattr(app, "middleware_stack", None)
    while layer is not None:
        if isinstance(layer, CustomCORSMiddleware):
            layer._parent_configures_cors = True
            return True
        layer = getattr(layer, "app", None)
    log.warning("Gradio's CORS layer was not found; the request guard still refuses other sites' pages")
    return False


def explain(error: BaseException) -> str:
    """What a client is told when Gradio itself refuses its request."""
    text = str(error)
    if "not uploaded by a user" in text:
        return ("A file parameter must be a file uploaded to this app (gradio_client: handle_file(path)); this "
                "path was not uploaded by a user.")
    counts = _COUNTS.search(text)
    if counts:
        return (f"This endpoint takes {counts[1]} values but the request sent {counts[2]}: send every parameter, "
                "in order (view_api() or /gradio_api/info lists them).")
    return REQUEST_UNFIT


def install_gradio_fixes() -> None:
    """The process-wide changes below (idempotent); `defer_cors` is per app."""
    hide_internal_errors()
    refuse_unknown_functions()


def hide_internal_errors() -> None:
    """Route every error Gradio reports through `explain` unless it is a gr.Error."""
    import gradio.queueing
    import gradio.utils
    from gradio.exceptions import AppError, Error

    original = gradio.utils.error_payload
    if getattr(original, "client_safe", False):
        return

    def error_payload(error, show_error):
        if error is not None and not isinstance(error, AppError):
            log.info("Gradio refused a request: %s", error)
            error = Error(explain(error))
        return original(error, show_error)

    error_payload.client_safe = True
    gradio.utils.error_payload = error_payload
    gradio.queueing.error_payload = error_payload


def refuse_unknown_functions() -> None:
    """A call naming a function index the app does not have is a 400 saying so."""
    from fastapi import HTTPException
    from gradio import route_utils

    original = route_utils.get_fn
    if getattr(original, "client_safe", False):
        return

    def get_fn(blocks, api_name, body):
        try:
            return original(blocks, api_name, body)
        except KeyError:
            raise HTTPException(400, f"This app has no function {body.fn_index!r}: call a named endpoint "
                                     "(view_api() or /gradio_api/info lists them).") from None

    get_fn.client_safe = True
    route_utils.get_fn = get_fn


# ---- transformers ---------------------------------------------------------------------------------------------
def compile_on_every_device(compile_config, on: bool) -> None:
    """Whether `generate` compiles with `compile_config` on CPU too (by default only on accelerators)."""
    compile_config._compile_all_devices = on
