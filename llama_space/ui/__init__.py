"""The Gradio app: one module per tab plus the named API endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.ui.api import register_chat_api
from llama_space.ui.chat_tab import build_chat_tab

if TYPE_CHECKING:
    from llama_space.model_manager import ModelManager

TITLE = "Llama Space"


def build_ui(manager: ModelManager) -> gr.Blocks:
    """The Blocks app for `manager` (tabs and API endpoints), with the shared generation queue."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE} · `{manager.base_name}`")
        with gr.Tab("Chat", id="chat"):
            build_chat_tab(manager)
        register_chat_api(manager)
    settings = manager.settings
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.concurrency)
    return demo
