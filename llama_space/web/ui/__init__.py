"""The Gradio app: one module per tab plus the named API endpoints."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.compat import set_queue_polling
from llama_space.web import oauth
from llama_space.web.i18n import L, language_switch
from llama_space.web.ui.adapters_tab import build_adapters_tab
from llama_space.web.ui.api import register_chat_api
from llama_space.web.ui.chat_tab import BASE_CHOICE, adapter_choices, build_chat_tab
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
        with gr.Row(elem_id="app-header"):
            gr.HTML(f"<h2 class='app-title'>{TITLE} <span class='model-id' title='{html.escape(backend.base_name)}'>"
                    f"{html.escape(backend.base_name)}</span></h2>", elem_id="app-title", padding=False,
                    scale=1, min_width=0)
            language_switch(demo)
        oauth.login_button()
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:  # on a phone every tab stays in view
            with gr.Tab(L("tab.chat"), id="chat"):
                chat_adapter = build_chat_tab(backend, demo, services.feedback)
            with gr.Tab(L("tab.finetune"), id="finetune"):
                poll, job_id, job_outputs = build_finetune_tab(actions, services.feedback)
            with gr.Tab(L("tab.adapters"), id="adapters") as adapters_tab:
                reload_adapters, adapter_outputs, (open_chat, compare, picked) = build_adapters_tab(actions)
            adapters_tab.select(reload_adapters, None, adapter_outputs, queue=False, **hidden)
            # the Compare tab and its endpoints
            follow_evaluation, evaluation_outputs, compare_adapters = build_compare_tab(services)
            add_export_tab(services.exports)  # the Export tab and its endpoints
        # An adapter chosen in the Adapters tab opens in Chat, or in Compare beside the base.
        open_chat.click(lambda name: (gr.Tabs(selected="chat"), gr.Dropdown(choices=adapter_choices(backend),
                                                                            value=name or BASE_CHOICE)),
                        picked, [tabs, chat_adapter], queue=False, **hidden)
        compare.click(lambda name: (gr.Tabs(selected="compare"), gr.Dropdown(choices=backend.list_adapters(),
                                                                             value=[name] if name else [])),
                      picked, [tabs, compare_adapters], queue=False, **hidden)
        demo.load(reload_adapters, None, adapter_outputs, queue=False, **hidden)
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
