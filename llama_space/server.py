"""Building and launching the whole app: model manager, Gradio UI and routes on one port."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llama_space.remote_backend import make_backend

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from llama_space.model_manager import ModelManager
    from llama_space.remote_backend import RemoteBackend
    from llama_space.settings import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> tuple[gr.Blocks, ModelManager | RemoteBackend]:
    """Load the model (or connect to the remote chat backend) and build the UI (no server started yet)."""
    from llama_space.ui import build_ui

    manager = make_backend(settings).load()
    return build_ui(manager), manager


def launch(settings: Settings, block: bool = True) -> tuple[gr.Blocks, FastAPI]:
    """Serve the UI, the Gradio API, POST / and /v1 on settings.host:settings.port.

    Returns (demo, FastAPI app) when not blocking; `demo.close()` stops the server and
    `app.state.manager` is the ModelManager behind every route.
    """
    from llama_space import security
    from llama_space.routes import register_routes

    demo, manager = build_app(settings)
    # Only launch() makes share links, so our routes go onto the FastAPI app it returns; the auth
    # middleware in app_kwargs guards them all from the first request on.
    app, local_url, share_url = demo.launch(
        server_name=settings.host, server_port=settings.port, share=settings.share,
        auth=settings.auth_pair, max_file_size=f"{settings.max_upload_mb}mb",
        prevent_thread_lock=True, show_error=True, app_kwargs=security.app_kwargs(settings))
    app.state.manager = manager
    register_routes(app, manager, settings)
    log.info("Llama Space is serving at %s%s (REST: POST /, OpenAI: /v1)", local_url,
             f" and {share_url}" if share_url else "")
    if block:
        demo.block_thread()
    return demo, app
