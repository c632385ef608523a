"""Building and launching the whole app: model manager, Gradio UI and routes on one port."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llama_space.model_manager import ModelManager

if TYPE_CHECKING:
    import gradio as gr

    from llama_space.settings import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> tuple[gr.Blocks, ModelManager]:
    """Load the model and build the UI (no server started yet)."""
    from llama_space.ui import build_ui

    manager = ModelManager(settings).load()
    return build_ui(manager), manager


def launch(settings: Settings, block: bool = True):
    """Start serving on settings.host:settings.port; returns the FastAPI app when not blocking."""
    demo, manager = build_app(settings)
    app, local_url, share_url = demo.launch(
        server_name=settings.host, server_port=settings.port, share=settings.share,
        auth=settings.auth_pair, max_file_size=f"{settings.max_upload_mb}mb",
        prevent_thread_lock=True, show_error=True)
    log.info("Llama Space is serving at %s%s", local_url, f" and {share_url}" if share_url else "")
    if block:
        demo.block_thread()
    return demo, app
