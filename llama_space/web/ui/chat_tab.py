"""The Chat tab: streaming chatbot with system prompt, sampling controls and adapter choice; conversations kept in
the browser (chat_history), regenerated versions, edit-and-rerun, Continue after the token limit, stop and clear."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gradio as gr

from llama_space import adapters as adapter_files
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.web.error_boundary import user_facing
from llama_space.web.i18n import L, t
from llama_space.web.ui import chat_history
from llama_space.web.ui.feedback import add_chat_feedback, chat_edit_box

if TYPE_CHECKING:
    from pathlib import Path

    from llama_space.inference.backend import ChatBackend, ReplyStream
    from llama_space.service.feedback import Feedback

UPDATE_INTERVAL = 0.04  # seconds between UI updates: at most ~25 per second, not one per token
BASE_CHOICE = "base"
# What the model is told when a reply the token limit cut goes on; the conversation shows only the joined reply.
CONTINUE_PROMPT = "Continue exactly where your last reply stopped, without repeating it."


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
                 switch: StopSwitch, ticket: int) -> Iterator[tuple[str, str, bool]]:
    """(reply so far, stats line, cut by the token limit) updates for one answer, which `switch` can stop."""
    stream = backend.stream(messages, params, "" if adapter == BASE_CHOICE else adapter)
    if stream.dropped_messages:
        gr.Warning(t("chat.dropped", count=stream.dropped_messages))
    try:
        with switch.watching(stream, ticket):
            for text in coalesce(stream):
                yield text, "", False
    finally:
        stream.close()
    yield text, stats_line(stream), stream.finish_reason == "length"


def stats_line(stream: ReplyStream) -> str:
    """Tokens, speed and first-token latency of a finished stream, and whether Stop or the token limit ended it."""
    stopped = stream.finish_reason == "cancelled"
    if stopped and not stream.completion_tokens:
        return t("chat.stopped")
    line = t("chat.stats", tokens=stream.completion_tokens, speed=stream.tokens_per_second,
             ttft=stream.time_to_first_token or 0.0)
    if stream.finish_reason == "length":
        line += "\n\n" + t("chat.truncated")
    return line + (" · " + t("chat.stopped") if stopped else "")


def _short(text: str) -> str:
    text = " ".join((text or "").split())
    return text[:120] + "…" if len(text) > 120 else text


def header_markdown(adapters_dir: Path, adapter: str, system_prompt: str) -> str:
    """The line over the conversation: which adapter answers, with the system prompt in force (yours, else the one
    the adapter was trained with, which chat then uses)."""
    base = adapter in ("", BASE_CHOICE, None)
    system = _short(system_prompt)
    if not system:
        trained = "" if base else _short(adapter_files.trained_system_prompt(adapters_dir, adapter))
        system = t("chat.trained_system", prompt=trained) if trained else t("chat.no_system")
    return t("chat.header", adapter=f"`{t('chat.base') if base else adapter}`", system=system)


def build_chat_tab(backend: ChatBackend, demo: gr.Blocks, feedback: Feedback | None = None) -> gr.Dropdown:
    """Lay out the chat tab and wire its events (a page load restores the open conversation); returns the adapter
    dropdown for other tabs to refresh."""
    with gr.Row(elem_id="chat-layout"):
        with gr.Column(scale=3, min_width=300):
            with gr.Row(elem_id="chat-top"):
                adapter = gr.Dropdown(adapter_choices(backend), value=BASE_CHOICE, label=L("common.adapter"),
                                      elem_id="adapter", allow_custom_value=False, scale=1, min_width=160)
                header = gr.Markdown(elem_id="chat-header")
            chatbot = gr.Chatbot(show_label=False, height="58vh", min_height=240, elem_id="chatbot",
                                 buttons=["copy"], editable="user")
            with gr.Row(visible=False, elem_id="chat-versions") as version_row:
                previous = gr.Button(L("chat.previous"), size="sm", elem_id="version-previous", min_width=60)
                version_md = gr.Markdown(elem_id="version-label")
                following = gr.Button(L("chat.next"), size="sm", elem_id="version-next", min_width=60)
            edit_box = chat_edit_box() if feedback is not None else None
            # One line that grows: Gradio sends on Enter only for lines=1; Shift+Enter then breaks the line.
            message = gr.Textbox(placeholder=L("chat.placeholder"), label=L("chat.message"), show_label=False, elem_id="chat-input", lines=1,
                                 max_lines=8)
            with gr.Row(elem_id="chat-buttons"):
                send = gr.Button(L("chat.send"), variant="primary", elem_id="send", min_width=70)
                stop = gr.Button(L("common.stop"), elem_id="stop", min_width=70)
                retry = gr.Button(L("chat.retry"), elem_id="retry", min_width=70)
                resume = gr.Button(L("chat.continue"), elem_id="continue", visible=False, min_width=70)
                clear = gr.Button(L("chat.clear"), elem_id="clear", min_width=70)
                open_edit = gr.Button(L("fb.edit_open"), elem_id="feedback-edit-open", min_width=70,
                                      visible=feedback is not None)
            stats = gr.Markdown(elem_id="chat-stats")
            gr.Markdown(L("chat.edit_hint"), elem_id="chat-edit-hint")
        with gr.Column(scale=1, min_width=240):
            conversations = gr.Dropdown([], value=None, label=L("chat.history"), info=L("chat.history_pick"),
                                  elem_id="chat-history", allow_custom_value=False)
            title = gr.Textbox(label=L("chat.rename_to"), elem_id="chat-title")
            with gr.Row():
                rename = gr.Button(L("chat.rename"), elem_id="chat-rename", size="sm", min_width=60)
                delete = gr.Button(L("chat.delete"), variant="stop", elem_id="chat-delete", size="sm", min_width=60)
            system_prompt = gr.Textbox(label=L("common.system_prompt"), lines=3, elem_id="system-prompt")
            max_new_tokens = gr.Slider(1, backend.settings.max_new_tokens_limit, value=512, step=1,
                                       label=L("common.max_new_tokens"), elem_id="max-new-tokens")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label=L("common.temperature"),
                                    elem_id="temperature")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label=L("common.top_p"))
            top_k = gr.Slider(0, 200, value=50, step=1, label=L("chat.top_k"))
            repetition_penalty = gr.Slider(0.5, 2, value=1.0, step=0.05, label=L("chat.repetition_penalty"))
    # Named as the /chat endpoint's parameters.
    sampling = {"system_prompt": system_prompt, "adapter": adapter, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty}
    if feedback is not None:
        add_chat_feedback(feedback, chatbot, sampling, open_edit, edit_box)
    switch = gr.State(StopSwitch())
    ticket = gr.State(0)  # the switch's ticket for the reply asked for last
    store = gr.BrowserState(chat_history.EMPTY_STORE, storage_key="llama-space-chats",
                            secret=chat_history.browser_secret(backend.settings.data_dir))
    hidden = {"api_visibility": "private"}

    def add_user_message(text: str, history: list[dict], stops: StopSwitch):
        if not text or not text.strip():
            raise gr.Error(t("chat.empty_message"))
        return "", [*history, {"role": "user", "content": text}], stops.ticket()

    def reply(history, taken, stops, system_prompt, adapter, max_new_tokens, temperature, top_p, top_k,
              repetition_penalty, prefix: str = ""):
        """Stream an answer to `history` (ending with a user message); `prefix` is a cut reply it goes on from."""
        if stops.stopped_since(taken):  # Stop or Clear came while this reply waited in the queue
            yield ([], "", gr.skip()) if stops.cleared_since(taken) else (gr.skip(), t("chat.stopped"), gr.skip())
            return
        yield gr.skip(), "", gr.Button(visible=False)  # early: the request can be cancelled while it waits
        # As sent (the sliders give floats): GenerationParams takes whole ones and refuses fractions, which
        # int() would have cut silently.
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  repetition_penalty=repetition_penalty)
        messages = normalize_messages(history[:-1], chat_history.text_of(history[-1]["content"]), system_prompt)
        shown = history[:-2] if prefix else history  # a continued reply replaces the cut one
        for text, line, cut in stream_reply(backend, messages, adapter, params, stops, taken):
            if stops.cleared_since(taken):  # the last update then empties the chat again, after any in flight
                yield [], "", gr.skip()
                return
            text = prefix + text
            bubble = [{"role": "assistant", "content": text}] if text else []  # never an empty bubble
            yield [*shown, *bubble], line, gr.Button(visible=cut)

    def respond(history: list[dict], taken: int, stops: StopSwitch, system_prompt: str, adapter: str,
                max_new_tokens: float, temperature: float, top_p: float, top_k: float, repetition_penalty: float):
        if not history or history[-1]["role"] != "user":
            return
        yield from reply(history, taken, stops, system_prompt, adapter, max_new_tokens, temperature, top_p, top_k,
                         repetition_penalty)

    def go_on(history: list[dict], taken: int, stops: StopSwitch, system_prompt: str, adapter: str,
              max_new_tokens: float, temperature: float, top_p: float, top_k: float, repetition_penalty: float):
        """Continue a reply the token limit cut: the model is asked to go on, and its text joins the cut one."""
        if not history or history[-1]["role"] != "assistant":
            return
        prefix = chat_history.text_of(history[-1]["content"])
        asked = [*history, {"role": "user", "content": CONTINUE_PROMPT}]
        yield from reply(asked, taken, stops, system_prompt, adapter, max_new_tokens, temperature, top_p, top_k,
                         repetition_penalty, prefix=prefix if prefix.endswith((" ", "\n")) else prefix + " ")

    def drop_last_reply(history: list[dict], stops: StopSwitch, kept: dict):
        kept = chat_history.remember_before_regenerating(kept, history)
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        return history, stops.ticket(), kept

    def edit_message(history: list[dict], stops: StopSwitch, kept: dict, edit: gr.EditData):
        """Run the chat again from an edited message of the user's: what came after it goes."""
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        edited = [*history[:index], {"role": "user", "content": chat_history.text_of(edit.value)}]
        return edited, stops.ticket(), "", chat_history.forget_from(kept, index), gr.Row(visible=False)

    def saved(history: list[dict], kept: dict):
        kept = chat_history.save(kept, history)
        return kept, *_history_views(kept, history)

    def saved_version(history: list[dict], kept: dict):
        kept = chat_history.add_version(kept, history)
        return kept, *_history_views(kept, history)

    def step_version(history: list[dict], kept: dict, step: int):
        kept, history = chat_history.show_version(kept, history, step)
        return kept, history, *_version_views(kept, history)

    def new_chat(stops: StopSwitch, kept: dict):
        stops.press(clear=True)
        kept = chat_history.new_conversation(kept)
        return [], "", gr.Button(visible=False), kept, *_history_views(kept, [])

    def reopen(conversation_id: str, stops: StopSwitch, kept: dict):
        stops.press()
        kept, messages = chat_history.open_conversation(kept, conversation_id or "")
        return messages, "", gr.Button(visible=False), kept, *_history_views(kept, messages)

    def restore(kept: dict):
        """A reloaded page shows the open conversation again, with the list of the others."""
        conversation = chat_history.current(kept)
        messages = conversation["messages"] if conversation else []
        return messages, *_history_views(kept, messages)

    def on_rename(kept: dict, new_title: str):
        kept = chat_history.rename(kept, (chat_history.current(kept) or {}).get("id", ""), new_title or "")
        return kept, gr.Dropdown(choices=chat_history.choices(kept), value=kept["current"] or None)

    def on_delete(stops: StopSwitch, kept: dict):
        stops.press(clear=True)
        kept = chat_history.delete(kept, kept.get("current", "") if isinstance(kept, dict) else "")
        return [], "", gr.Button(visible=False), kept, *_history_views(kept, [])

    history_views = [conversations, title, version_row, version_md]
    reply_outputs = [chatbot, stats, resume]
    reply_event = {"fn": user_facing(respond, "streaming a chat reply"),
                   "inputs_kwargs": {"history": chatbot, "taken": ticket, "stops": switch, **sampling},
                   "outputs": reply_outputs, **hidden}
    save_event = {"fn": saved, "inputs_kwargs": {"history": chatbot, "kept": store},
                  "outputs": [store, *history_views], "queue": False, **hidden}
    for trigger in (message.submit, send.click):
        trigger(add_user_message, inputs_kwargs={"text": message, "history": chatbot, "stops": switch},
                outputs=[message, chatbot, ticket], queue=False, **hidden).then(**reply_event).then(**save_event)
    retry.click(drop_last_reply, inputs_kwargs={"history": chatbot, "stops": switch, "kept": store},
                outputs=[chatbot, ticket, store], queue=False, **hidden).then(**reply_event).then(
        saved_version, inputs_kwargs={"history": chatbot, "kept": store}, outputs=[store, *history_views],
        queue=False, **hidden)
    chatbot.edit(edit_message, [chatbot, switch, store], [chatbot, ticket, stats, store, version_row], queue=False, **hidden).then(
        **reply_event).then(**save_event)
    resume.click(lambda stops: stops.ticket(), switch, ticket, queue=False, **hidden).then(
        user_facing(go_on, "continuing a chat reply"),
        inputs_kwargs={"history": chatbot, "taken": ticket, "stops": switch, **sampling},
        outputs=reply_outputs, **hidden).then(**save_event)
    previous.click(lambda h, k: step_version(h, k, -1), [chatbot, store], [store, chatbot, version_row, version_md],
                   queue=False, **hidden)
    following.click(lambda h, k: step_version(h, k, 1), [chatbot, store], [store, chatbot, version_row, version_md],
                    queue=False, **hidden)

    # The reply then ends itself and writes its own stats line, "stopped" included (see StopSwitch).
    stop.click(StopSwitch.press, switch, None, queue=False, **hidden)
    # The one Clear: this button (the chatbot's own trash icon is hidden by the app's CSS: pressed mid-reply it
    # empties the chat in the browser without stopping the generation).
    clear.click(new_chat, [switch, store], [chatbot, stats, resume, store, *history_views], queue=False, **hidden)
    conversations.input(reopen, [conversations, switch, store], [chatbot, stats, resume, store, *history_views], queue=False,
                  **hidden)
    rename.click(on_rename, [store, title], [store, conversations], queue=False, **hidden)
    delete.click(on_delete, [switch, store], [chatbot, stats, resume, store, *history_views], queue=False, **hidden)
    def on_header(adapter_name: str, system: str) -> str:
        return header_markdown(backend.settings.adapters_dir, adapter_name, system)

    for event in (adapter.change, system_prompt.change):
        event(on_header, [adapter, system_prompt], header, queue=False, **hidden)
    adapter.focus(lambda: gr.Dropdown(choices=adapter_choices(backend)), None, adapter, queue=False, **hidden)
    demo.load(restore, store, [chatbot, *history_views], queue=False, **hidden)
    demo.load(on_header, [adapter, system_prompt], header, queue=False, **hidden)
    return adapter


def _history_views(kept: dict, messages: list[dict]) -> tuple:
    """The conversation list (the open one chosen), the rename box and the version arrows."""
    conversation = chat_history.current(kept)
    return (gr.Dropdown(choices=chat_history.choices(kept), value=conversation["id"] if conversation else None),
            gr.Textbox(value=conversation["title"] if conversation else ""), *_version_views(kept, messages))


def _version_views(kept: dict, messages: list[dict]) -> tuple:
    shown, count = chat_history.versions(kept, messages)
    return gr.Row(visible=count > 1), t("chat.version", index=shown + 1, count=count)

