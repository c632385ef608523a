"""The Gradio app: one module per tab plus the named API endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space import oauth
from llama_space.ui.adapters_tab import build_adapters_tab
from llama_space.ui.api import register_chat_api
from llama_space.ui.chat_tab import build_chat_tab
from llama_space.ui.finetune_tab import build_finetune_tab
from llama_space.ui.training_api import TrainingActions, register_training_api

if TYPE_CHECKING:
    from llama_space.model_manager import ModelManager
    from llama_space.training.runner import JobRunner

TITLE = "Llama Space"


def build_ui(manager: ModelManager, runner: JobRunner | None = None) -> gr.Blocks:
    """The Blocks app (tabs and API endpoints) with the shared generation queue."""
    from llama_space.training.runner import JobRunner

    settings = manager.settings
    # On an OAuth Space the controls stay on; each change then needs the owner's HF login (security.py).
    actions = TrainingActions(manager, runner or JobRunner(settings),
                              settings.changes_allowed or oauth.oauth_enabled(),
                              settings.changes_disabled_reason)
    hidden = {"api_visibility": "private"}
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE} · `{manager.base_name}`")
        oauth.login_button()
        with gr.Tab("Chat", id="chat"):
            build_chat_tab(manager)
        with gr.Tab("Fine-tune", id="finetune"):
            poll, job_id, job_outputs = build_finetune_tab(actions)
        with gr.Tab("Adapters", id="adapters") as adapters_tab:
            reload_adapters, adapter_outputs = build_adapters_tab(actions)
        adapters_tab.select(reload_adapters, None, adapter_outputs, queue=False, **hidden)
        # A refreshed or reopened page shows the running (or latest) job again.
        demo.load(poll, job_id, job_outputs, queue=False, **hidden)
        register_chat_api(manager)
        register_training_api(actions)
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.concurrency)
    return demo
