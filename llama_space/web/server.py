"""Building and launching the whole app: chat backend, services, Gradio UI and routes on one port.

Everything the server answers is in place before its port opens: the auth middleware, the REST and /v1
routes (handed to the FastAPI constructor, so no request sees a half-built app) and the lifespan, composed
here: the MCP server offers only MCP_TOOLS, the janitor sweeps while the app serves, and the services (the
backend with them) are closed when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from llama_space.service.services import Services
    from llama_space.settings import Settings
    from llama_space.web.throttle import FailureLedger

log = logging.getLogger(__name__)

# The named endpoints Gradio's MCP server (/gradio_api/mcp) offers as tools: chatting, looking and starting a
# job. Cancelling, resuming and deleting stay off it, so an agent cannot undo work by a wrong tool choice.
MCP_TOOLS = ("generate", "chat", "list_adapters", "validate_dataset", "start_training", "job_status", "record_feedback",
             "feedback_dataset")


def build_app(settings: Settings) -> tuple[gr.Blocks, Services]:
    """Load the model (or connect to the remote chat backend), build the services once and the UI over them."""
    from llama_space.inference.backend import make_backend
    from llama_space.service.permissions import Permissions
    from llama_space.service.services import Services
    from llama_space.web import oauth
    from llama_space.web.ui import build_ui

    services = Services.build(make_backend(settings).load(), Permissions(settings, oauth.current_profile))
    return build_ui(services), services


def gradio_temp_dir(settings: Settings) -> Path:
    """Gradio's upload and cache dir: the app's own under the data dir (the janitor sweeps only that), unless
    the operator chose one with GRADIO_TEMP_DIR. Set before the Blocks exist: they read it when built."""
    chosen = os.environ.get("GRADIO_TEMP_DIR")
    if not chosen:
        chosen = str((Path(settings.data_dir) / "gradio").resolve())
        os.environ["GRADIO_TEMP_DIR"] = chosen
    Path(chosen).mkdir(parents=True, exist_ok=True)
    return Path(chosen)


def lifespan(settings: Settings, services: Services):
    """The app's lifespan: sweep scratch while serving (only inside the data dir); at the end close the services
    (Services.close: what borrows the served weights first, then the backend)."""
    from llama_space.compat import defer_cors
    from llama_space.web.janitor import Janitor, sweep_forever

    @asynccontextmanager
    async def serving(app):
        prepare_mcp(app.get_blocks(), settings)  # runs before the port opens
        defer_cors(app)
        uploads = Path(getattr(app, "uploaded_file_dir", "") or "").resolve()
        own = uploads.is_relative_to(Path(settings.data_dir).resolve())
        task = asyncio.create_task(sweep_forever(Janitor(settings, uploads if own else None)))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(services.close)  # seconds to minutes: a shared training job checkpoints

    return serving


def prepare_mcp(demo: gr.Blocks, settings: Settings) -> None:
    """Offer only MCP_TOOLS on Gradio's MCP server (it offers every public endpoint, and gradio has no switch
    that keeps one in view_api() but off MCP) and, behind --auth, let its loopback client log in."""
    from llama_space.compat import offer_mcp_tools, replace_mcp_client

    mcp = demo.mcp_server_obj
    if mcp is None:
        return
    offer_mcp_tools(mcp, MCP_TOOLS)
    if settings.auth_pair:
        replace_mcp_client(mcp, _logged_in_client(mcp, settings.auth_pair))


def _logged_in_client(mcp, auth_pair: tuple[str, str]):
    """A replacement for the MCP server's client factory. It runs queued tools through a gradio_client of its
    own against this app, made without credentials, which the auth middleware refuses; this one logs in
    (only a request that passed the same login reaches a tool; each call still carries the caller's headers)."""
    from gradio_client import Client

    made: list[Client] = []
    lock = threading.Lock()

    def client() -> Client:
        with lock:
            if not made:
                made.append(Client(mcp.local_url, auth=auth_pair, download_files=False, verbose=False,
                                   analytics_enabled=False, headers={"x-gradio-user": "mcp"},
                                   _skip_components=False))
            return made[0]

    return client


def middleware(settings: Settings, login_failures: FailureLedger) -> list:
    """What every request passes, outermost first: the request guard (Host, Origin, JSON bodies, upload bounds),
    CORS for the origins the operator allows, the failed-login throttle, then the login itself."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from llama_space.web import auth
    from llama_space.web.guard import RequestGuard
    from llama_space.web.throttle import LoginThrottle

    cors = [Middleware(CORSMiddleware, allow_origins=settings.origin_list, allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])] if settings.origin_list else []
    return [Middleware(RequestGuard, settings=settings), *cors, Middleware(LoginThrottle, ledger=login_failures),
            *auth.middleware(settings)]


def launch(settings: Settings, block: bool = True) -> tuple[gr.Blocks, FastAPI]:
    """Serve the UI, the Gradio API, POST / and /v1 on settings.host:settings.port.

    Returns (demo, FastAPI app) when not blocking; `demo.close()` stops the server,
    `app.state.services` are the services behind every surface and `app.state.backend` is their ChatBackend.
    """
    from llama_space import compat
    from llama_space.web.i18n import I18N
    from llama_space.web.routes import api_routes
    from llama_space.web.throttle import FailureLedger
    from llama_space.web.ui.style import CSS

    gradio_temp_dir(settings)
    compat.install_gradio_fixes()
    login_failures = FailureLedger()
    demo, services = build_app(settings)
    # Only launch() makes share links, so launch() creates the FastAPI app; everything of ours goes into its
    # constructor. show_error is safe: every callback of ours raises only the gr.Error web/error_boundary.py made
    # (no raw exception text), and Gradio's own refusals go through compat.explain.
    app, local_url, share_url = demo.launch(
        server_name=settings.host, server_port=settings.port, share=settings.share,
        auth=settings.auth_pair, max_file_size=f"{settings.max_upload_mb}mb",
        prevent_thread_lock=True, show_error=True, mcp_server=True, i18n=I18N, css=CSS,
        app_kwargs={"routes": api_routes(services.backend, settings),
                    "middleware": middleware(settings, login_failures), "lifespan": lifespan(settings, services)})
    app.state.services = services
    app.state.backend = services.backend
    app.state.login_failures = login_failures
    log.info("Llama Space is serving at %s%s (REST: POST /, OpenAI: /v1, MCP: /gradio_api/mcp/)", local_url,
             f" and {share_url}" if share_url else "")
    if block:
        demo.block_thread()
    return demo, app
