"""The Chat tab: streaming chatbot with system prompt, sampling controls, adapter choice, stop/retry/clear."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.errors import UserError
from llama_space.params import GenerationParams
from llama_space.prompting import normalize_messages

if TYPE_CHECKING:
    from llama_space.model_manager import ModelManager

UPDATE_INTERVAL = 0.04  # seconds between UI updates: at most ~25 per second, not one per token
BASE_CHOICE = "base"


def coalesce(chunks: Iterator[str], interval: float = UPDATE_INTERVAL) -> Iterator[str]:
    """Yield the accumulated text at most once per `interval`, and always once at the end.

    An empty chunk (a stream's heartbeat while it waits for the model) is passed on as a repeat of the
    text so far, so Gradio gets a point at which it can cancel the request.
    """
    text, last, pending = "", 0.0, False
    for chunk in chunks:
        text += chunk
        pending = pending or bool(chunk)
        now = time.monotonic()
        if now - last >= interval:
            yield text
            last, pending = now, False
    if pending or not text:
        yield text


def adapter_choices(manager: ModelManager) -> list[str]:
    """Dropdown choices: the base model first, then every adapter on disk."""
    return [BASE_CHOICE, *manager.list_adapters()]


def stream_reply(manager: ModelManager, messages: list[dict], adapter: str,
                 params: GenerationParams) -> Iterator[tuple[str, str]]:
    """(reply so far, stats line) updates for one answer; UserError becomes a gr.Error."""
    try:
        stream = manager.stream(messages, params, "" if adapter == BASE_CHOICE else adapter)
    except UserError as exc:
        raise gr.Error(str(exc)) from exc
    if stream.dropped_messages:
        gr.Warning(f"{stream.dropped_messages} older messages were left out to fit the context window.")
    try:
        for text in coalesce(stream):
            yield text, ""
    finally:
        stream.close()
    ttft = stream.time_to_first_token or 0.0
    stats = (f"{stream.completion_tokens} tokens · {stream.tokens_per_second:.1f} tok/s · "
             f"first token {ttft:.2f} s" + (" · stopped" if stream.finish_reason == "cancelled" else ""))
    yield text, stats


def build_chat_tab(manager: ModelManager) -> gr.Dropdown:
    """Lay out the chat tab and wire its events; returns the adapter dropdown for other tabs to refresh."""
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Chat", height=480, elem_id="chatbot", buttons=["copy"])
            message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False,
                                 elem_id="chat-input", lines=2)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                stop = gr.Button("Stop", elem_id="stop")
                retry = gr.Button("Retry", elem_id="retry")
                clear = gr.Button("Clear", elem_id="clear")
            stats = gr.Markdown(elem_id="chat-stats")
        with gr.Column(scale=1):
            adapter = gr.Dropdown(adapter_choices(manager), value=BASE_CHOICE, label="Adapter",
                                  elem_id="adapter", allow_custom_value=False)
            system_prompt = gr.Textbox(label="System prompt", lines=3, elem_id="system-prompt")
            max_new_tokens = gr.Slider(1, manager.settings.max_new_tokens_limit, value=512, step=1,
                                       label="Max new tokens", elem_id="max-new-tokens")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)")
            repetition_penalty = gr.Slider(0.5, 2, value=1.0, step=0.05, label="Repetition penalty")
    sampling = [system_prompt, adapter, max_new_tokens, temperature, top_p, top_k, repetition_penalty]

    def add_user_message(text: str, history: list[dict]):
        if not text or not text.strip():
            raise gr.Error("The message is empty: type something to send.")
        return "", [*history, {"role": "user", "content": text}]

    def respond(history: list[dict], system: str, adapter_name: str, max_new: float, temp: float,
                p: float, k: float, penalty: float):
        if not history or history[-1]["role"] != "user":
            return
        yield history, ""  # an early update makes the request cancellable while it waits (see ui/api.py)
        try:
            params = GenerationParams(max_new_tokens=int(max_new), temperature=temp, top_p=p, top_k=int(k),
                                      repetition_penalty=penalty)
            messages = normalize_messages(history[:-1], _text(history[-1]["content"]), system)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        for reply, line in stream_reply(manager, messages, adapter_name, params):
            yield [*history, {"role": "assistant", "content": reply}], line

    def drop_last_reply(history: list[dict]):
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        return history

    hidden = {"api_visibility": "private"}
    submit_events = []
    for trigger in (message.submit, send.click):
        event = trigger(add_user_message, [message, chatbot], [message, chatbot], queue=False, **hidden)
        submit_events.append(event.then(respond, [chatbot, *sampling], [chatbot, stats], **hidden))
    retry_event = retry.click(drop_last_reply, chatbot, chatbot, queue=False, **hidden).then(
        respond, [chatbot, *sampling], [chatbot, stats], **hidden)

    def on_stop(history: list[dict], line: str) -> str:
        # Cancelling ends a reply mid-stream, before it writes its own stats line (empty while streaming).
        return line or ("stopped" if history else "")

    # Cancel first, then write the line, so no late update of the cancelled reply can overwrite it.
    stop.click(None, cancels=[*submit_events, retry_event], **hidden).then(
        on_stop, [chatbot, stats], stats, queue=False, **hidden)
    clear.click(lambda: ([], ""), None, [chatbot, stats], queue=False, cancels=submit_events, **hidden)
    adapter.focus(lambda: gr.Dropdown(choices=adapter_choices(manager)), None, adapter, queue=False, **hidden)
    return adapter


def _text(content) -> str:
    if isinstance(content, list):  # multimodal message parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)
