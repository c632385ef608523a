"""The Chat tab: streaming chatbot with system prompt, sampling controls, adapter choice, stop/retry/clear."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.web.error_boundary import user_facing
from llama_space.web.ui.feedback import add_chat_feedback

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend, ReplyStream

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


def adapter_choices(backend: ChatBackend) -> list[str]:
    """Dropdown choices: the base model first, then every adapter on disk."""
    return [BASE_CHOICE, *backend.list_adapters()]


class StopSwitch:
    """One browser session's Stop and Clear: they end the replies it streams now, and those queued at their start.

    A stopped reply ends by itself, with its own last update. Gradio's `cancels=` would end it from outside,
    but then (gradio 6.31) the frontend reads the empty `process_completed` that /cancel sends as an update
    without data; that update fails, and when it lands after the frontend's own "complete" the reply's
    outputs keep a red "Error" badge (and updates still in flight can refill a cleared chat).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._presses = 0
        self._last_clear = 0  # the press that cleared the chat last
        self._streams: set[ReplyStream] = set()

    def __deepcopy__(self, memo: dict) -> StopSwitch:
        return StopSwitch()  # gr.State copies its initial value for each session: each gets its own switch

    def ticket(self) -> int:
        """Taken when a reply is asked for: a press after it stops that reply."""
        with self._lock:
            return self._presses

    def stopped_since(self, ticket: int) -> bool:
        """Whether Stop or Clear was pressed after `ticket` was taken."""
        with self._lock:
            return self._presses != ticket

    def cleared_since(self, ticket: int) -> bool:
        """Whether Clear was pressed after `ticket` was taken."""
        with self._lock:
            return self._last_clear > ticket

    def press(self, clear: bool = False) -> None:
        """Stop every reply of this session: a streaming one ends within a decode step, a queued one at its start."""
        with self._lock:
            self._presses += 1
            if clear:
                self._last_clear = self._presses
            streams = list(self._streams)
        for stream in streams:
            stream.close()

    @contextmanager
    def watching(self, stream: ReplyStream, ticket: int) -> Iterator[None]:
        """While the block runs, a press closes `stream` (at once if one came after `ticket`)."""
        with self._lock:
            pressed = self._presses != ticket
            self._streams.add(stream)
        try:
            if pressed:
                stream.close()
            yield
        finally:
            with self._lock:
                self._streams.discard(stream)


def stream_reply(backend: ChatBackend, messages: list[dict], adapter: str, params: GenerationParams,
                 switch: StopSwitch, ticket: int) -> Iterator[tuple[str, str]]:
    """(reply so far, stats line) updates for one answer, which `switch` can stop."""
    stream = backend.stream(messages, params, "" if adapter == BASE_CHOICE else adapter)
    if stream.dropped_messages:
        gr.Warning(f"{stream.dropped_messages} older messages were left out to fit the context window.")
    try:
        with switch.watching(stream, ticket):
            for text in coalesce(stream):
                yield text, ""
    finally:
        stream.close()
    yield text, stats_line(stream)


def stats_line(stream: ReplyStream) -> str:
    """Tokens, speed and first-token latency of a finished stream, and whether Stop ended it."""
    stopped = stream.finish_reason == "cancelled"
    if stopped and not stream.completion_tokens:
        return "stopped"
    ttft = stream.time_to_first_token or 0.0
    return (f"{stream.completion_tokens} tokens · {stream.tokens_per_second:.1f} tok/s · "
            f"first token {ttft:.2f} s" + (" · stopped" if stopped else ""))


def build_chat_tab(backend: ChatBackend, feedback=None) -> gr.Dropdown:
    """Lay out the chat tab and wire its events; returns the adapter dropdown for other tabs to refresh."""
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Chat", height=480, elem_id="chatbot", buttons=["copy"])
            # One line that grows: Gradio sends on Enter only for lines=1; Shift+Enter then breaks the line.
            message = gr.Textbox(placeholder="Type a message · Enter sends, Shift+Enter adds a line",
                                 show_label=False, elem_id="chat-input", lines=1, max_lines=8)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                stop = gr.Button("Stop", elem_id="stop")
                retry = gr.Button("Retry", elem_id="retry")
                clear = gr.Button("Clear", elem_id="clear")
            stats = gr.Markdown(elem_id="chat-stats")
        with gr.Column(scale=1):
            adapter = gr.Dropdown(adapter_choices(backend), value=BASE_CHOICE, label="Adapter",
                                  elem_id="adapter", allow_custom_value=False)
            system_prompt = gr.Textbox(label="System prompt", lines=3, elem_id="system-prompt")
            max_new_tokens = gr.Slider(1, backend.settings.max_new_tokens_limit, value=512, step=1,
                                       label="Max new tokens", elem_id="max-new-tokens")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)")
            repetition_penalty = gr.Slider(0.5, 2, value=1.0, step=0.05, label="Repetition penalty")
    # Named as the /chat endpoint's parameters.
    sampling = {"system_prompt": system_prompt, "adapter": adapter, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty}
    if feedback is not None:
        add_chat_feedback(feedback, chatbot, sampling, backend.settings.adapters_dir)
    switch = gr.State(StopSwitch())
    ticket = gr.State(0)  # the switch's ticket for the reply asked for last

    def add_user_message(text: str, history: list[dict], stops: StopSwitch):
        if not text or not text.strip():
            raise gr.Error("The message is empty: type something to send.")
        return "", [*history, {"role": "user", "content": text}], stops.ticket()

    def respond(history: list[dict], taken: int, stops: StopSwitch, system_prompt: str, adapter: str,
                max_new_tokens: float, temperature: float, top_p: float, top_k: float, repetition_penalty: float):
        if not history or history[-1]["role"] != "user":
            return
        if stops.stopped_since(taken):  # Stop or Clear came while this reply waited in the queue
            yield ([], "") if stops.cleared_since(taken) else (history, "stopped")
            return
        yield history, ""  # an early update makes the request cancellable while it waits (see ui/api.py)
        # As sent (the sliders give floats): GenerationParams takes whole ones and refuses fractions, which
        # int() would have cut silently.
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  repetition_penalty=repetition_penalty)
        messages = normalize_messages(history[:-1], _text(history[-1]["content"]), system_prompt)
        for reply, line in stream_reply(backend, messages, adapter, params, stops, taken):
            if stops.cleared_since(taken):  # the last update then empties the chat again, after any in flight
                yield [], ""
                return
            yield [*history, {"role": "assistant", "content": reply}], line

    def drop_last_reply(history: list[dict], stops: StopSwitch):
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        return history, stops.ticket()

    hidden = {"api_visibility": "private"}
    reply_event = {"fn": user_facing(respond, "streaming a chat reply"),
                   "inputs_kwargs": {"history": chatbot, "taken": ticket, "stops": switch, **sampling},
                   "outputs": [chatbot, stats], **hidden}
    for trigger in (message.submit, send.click):
        trigger(add_user_message, inputs_kwargs={"text": message, "history": chatbot, "stops": switch},
                outputs=[message, chatbot, ticket], queue=False, **hidden).then(**reply_event)
    retry.click(drop_last_reply, inputs_kwargs={"history": chatbot, "stops": switch}, outputs=[chatbot, ticket],
                queue=False, **hidden).then(**reply_event)

    def clear_chat(stops: StopSwitch):
        stops.press(clear=True)
        return [], ""

    # The reply then ends itself and writes its own stats line, "stopped" included (see StopSwitch).
    stop.click(StopSwitch.press, switch, None, queue=False, **hidden)
    clear.click(clear_chat, switch, [chatbot, stats], queue=False, **hidden)
    adapter.focus(lambda: gr.Dropdown(choices=adapter_choices(backend)), None, adapter, queue=False, **hidden)
    return adapter


def _text(content) -> str:
    if isinstance(content, list):  # multimodal message parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)
