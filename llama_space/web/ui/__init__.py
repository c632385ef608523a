"""The Gradio app: one module per tab plus the named API endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.compat import set_queue_polling
from llama_space.web import oauth
from llama_space.web.ui.adapters_tab import build_adapters_tab
from llama_space.web.ui.api import register_chat_api
from llama_space.web.ui.chat_tab import build_chat_tab
from llama_space.web.ui.compare_tab import build_compare_tab
from llama_space.web.ui.export_tab import add_export_tab
from llama_space.web.ui.feedback_api import register_feedback_api
from llama_space.web.ui.finetune_tab import build_finetune_tab
from llama_space.web.ui.training_api import register_training_api

if TYPE_CHECKING:
    from llama_space.service.services import Services
    from llama_space.settings import Settings

TITLE = "Llama Space"

# How often Gradio's queue looks for waiting events and pending progress updates, in seconds. Its defaults
# (1 ms and 10 ms on Linux) wake the event-loop thread about 1,100 times a second, idle or not: 5-7% of a core
# on a 2-core VM, taken from the cores that decode the model or train. 10 ms cuts that to about 2% and adds at
# most 10 ms before a request starts; progress bars still update ten times a second.
QUEUE_POLL_S = 0.01
PROGRESS_POLL_S = 0.1


def build_ui(services: Services) -> gr.Blocks:
    """The Blocks app (tabs and API endpoints) over the app's services, with the shared generation queue."""
    backend, actions = services.backend, services.actions
    hidden = {"api_visibility": "private"}
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE} · `{backend.base_name}`")
        oauth.login_button()
        with gr.Tab("Chat", id="chat"):
            build_chat_tab(backend, services.feedback)
        with gr.Tab("Fine-tune", id="finetune"):
            poll, job_id, job_outputs = build_finetune_tab(actions, services.feedback)
        with gr.Tab("Adapters", id="adapters") as adapters_tab:
            reload_adapters, adapter_outputs = build_adapters_tab(actions)
        adapters_tab.select(reload_adapters, None, adapter_outputs, queue=False, **hidden)
        follow_evaluation, evaluation_outputs = build_compare_tab(services)  # the Compare tab and its endpoints
        add_export_tab(services.exports)  # the Export tab and its endpoints
        # A refreshed or reopened page shows the running (or latest) job again.
        demo.load(poll, job_id, job_outputs, queue=False, **hidden)
        # ...and follows the running evaluation, or shows the latest result; without taking a generation slot.
        demo.load(follow_evaluation, None, evaluation_outputs, concurrency_limit=None, **hidden)
        register_chat_api(backend)
        register_training_api(actions)
        register_feedback_api(services.feedback)
    return with_queue(demo, services.settings)


def with_queue(demo: gr.Blocks, settings: Settings) -> gr.Blocks:
    """Give `demo` the shared generation queue: `max_queue` waiting, `concurrency` at once, polled every
    QUEUE_POLL_S."""
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.concurrency)
    set_queue_polling(demo, QUEUE_POLL_S, PROGRESS_POLL_S)
    return demo
