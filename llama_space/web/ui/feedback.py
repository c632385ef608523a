"""Feedback in the tabs: thumbs and "what it should have been" in Chat, "this one is better" in Compare, and the
collected feedback as datasets in Fine-tune. Each callback is one call into service.feedback.Feedback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.inference.prompting import normalize_messages
from llama_space.web.error_boundary import user_facing
from llama_space.web.i18n import L, t
from llama_space.web.strings import STRINGS

if TYPE_CHECKING:
    from llama_space.service.compare import Comparer
    from llama_space.service.feedback import Feedback

HIDDEN = {"api_visibility": "private"}
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")


def _content(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def _before(history: list[dict], index: int, system_prompt: str) -> list[dict]:
    """The conversation a reply at `index` answers, with the chat's system prompt."""
    return normalize_messages([{"role": m["role"], "content": _content(m)} for m in history[:index]],
                              system_prompt=system_prompt)


@dataclass
class EditBox:
    """Chat's "the last reply as it should have been": a box under the conversation, shown by "Edit reply"."""

    box: gr.Column
    text: gr.Textbox
    save: gr.Button
    close: gr.Button


def chat_edit_box() -> EditBox:
    """Lay out the edit box where it is called (right under the chat box), hidden until "Edit reply" opens it."""
    with gr.Column(visible=False, elem_id="feedback-edit-box") as box:
        text = gr.Textbox(label=L("fb.edit"), info=L("fb.edit_info"), lines=2, max_lines=8, elem_id="feedback-edit")
        with gr.Row(elem_id="feedback-edit-buttons"):
            save = gr.Button(L("fb.save_edit"), variant="primary", size="sm", elem_id="feedback-save-edit",
                             min_width=90)
            close = gr.Button(L("fb.edit_close"), size="sm", elem_id="feedback-edit-close", min_width=90)
    return EditBox(box, text, save, close)


def _last_reply(history: list[dict]) -> int:
    """The index of the conversation's last reply; a "no reply yet" error when there is none."""
    last = max((i for i, m in enumerate(history) if m["role"] == "assistant"), default=None)
    if last is None:
        raise gr.Error(t("fb.no_reply"))
    return last


def add_chat_feedback(feedback: Feedback, chatbot: gr.Chatbot, sampling: dict[str, gr.Component],
                      open_edit: gr.Button, edit: EditBox) -> None:
    """Thumbs on every reply; `open_edit` shows `edit` with the last reply in it, to be rewritten and saved."""

    def settings(values: dict) -> dict:
        return {key: values[key] for key in GENERATION_KEYS if key in values}

    def on_like(data: gr.LikeData, history, system_prompt, adapter, **values):
        if data.liked is None:  # a mark taken back
            return
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        kind = "up" if data.liked else "down"
        feedback.record(kind, _before(history, index, system_prompt), _content(history[index]),
                        "" if adapter == "base" else adapter, generation=settings(values))
        gr.Info(t("fb.saved"))

    def on_open(history):
        return gr.Column(visible=True), _content(history[_last_reply(history)])

    def on_edit(text, history, system_prompt, adapter, **values):
        last = _last_reply(history)
        feedback.record("edit", _before(history, last, system_prompt), _content(history[last]),
                        "" if adapter == "base" else adapter, edited=text, generation=settings(values))
        gr.Info(t("fb.edit_saved"))
        return "", gr.Column(visible=False)

    inputs = {"history": chatbot, **sampling}
    chatbot.like(user_facing(on_like, "saving feedback"), inputs_kwargs=inputs, outputs=None, **HIDDEN)
    open_edit.click(user_facing(on_open, "opening the edit"), chatbot, [edit.box, edit.text], queue=False, **HIDDEN)
    edit.close.click(lambda: gr.Column(visible=False), None, edit.box, queue=False, **HIDDEN)
    edit.save.click(user_facing(on_edit, "saving the edit"), inputs_kwargs={"text": edit.text, **inputs},
                    outputs=[edit.text, edit.box], **HIDDEN)


def add_compare_picks(feedback: Feedback, comparer: Comparer, prompt: gr.Textbox, boxes: list[gr.Textbox],
                      models: dict[str, gr.Component], sampling: dict[str, gr.Component]) -> None:
    """A "this one is better" button under each side-by-side reply: a pick of it over the other replies."""
    with gr.Row():
        buttons = [gr.Button(L("fb.pick"), size="sm", elem_id=f"compare-pick-{i}") for i in range(len(boxes))]

    def on_pick(slot: int, prompt, system_prompt, adapters, include_base, *replies, **values):
        names = comparer.models(adapters, include_base)
        shown = list(zip(names, replies))
        if slot >= len(shown) or not shown[slot][1].strip():
            raise gr.Error(t("fb.compare_first"))
        name, reply = shown[slot]
        feedback.record("pick", normalize_messages([], prompt, system_prompt), reply,
                        "" if name == "base" else name, other_replies=[r for i, (_, r) in enumerate(shown) if i != slot],
                        generation={k: v for k, v in values.items() if k in GENERATION_KEYS})
        gr.Info(t("fb.picked", name=name))

    for slot, button in enumerate(buttons):
        button.click(user_facing(lambda *args, slot=slot, **kw: on_pick(slot, *args, **kw), "saving the pick"),
                     [prompt, sampling["system_prompt"], models["adapters"], models["include_base"], *boxes], None,
                     **HIDDEN)


def build_feedback_panel(feedback: Feedback, upload: gr.File, method: gr.Dropdown):
    """Fine-tune: the collected feedback's counts, downloads as JSONL, "train on it" (the file goes into `upload`
    with a method that trains on it) and Clear; returns the "train on it" events, for the data check to follow."""
    with gr.Accordion(L("fb.panel"), open=False, elem_id="feedback-panel"):
        counts = gr.Markdown(elem_id="feedback-counts")
        with gr.Row():
            refresh = gr.Button(L("fb.refresh"), elem_id="feedback-refresh")
            pairs = gr.DownloadButton(L("fb.pairs"), elem_id="feedback-pairs")
            rows = gr.DownloadButton(L("fb.sft"), elem_id="feedback-sft")
            clear = gr.Button(L("fb.clear"), variant="stop", elem_id="feedback-clear")
        with gr.Row():
            use_pairs = gr.Button(L("fb.use_pairs"), elem_id="feedback-use-pairs")
            use_rows = gr.Button(L("fb.use_sft"), elem_id="feedback-use-sft")

    def on_refresh():
        found = feedback.private_dataset("preference")["counts"]
        marks = " · ".join(f"{t(f'fb.kind.{kind}') if f'fb.kind.{kind}' in STRINGS else kind}: {n}"
                           for kind, n in found["marks"].items()) or t("fb.no_marks")
        return (t("fb.counts", pairs=found["preference_pairs"], rows=found["sft_rows"], marks=marks),
                str(feedback.jsonl("preference")) if found["preference_pairs"] else None,
                str(feedback.jsonl("sft")) if found["sft_rows"] else None)

    outputs = [counts, pairs, rows]
    refresh.click(user_facing(on_refresh, "reading the feedback"), None, outputs, **HIDDEN)
    clear.click(user_facing(lambda: feedback.clear() and None, "clearing the feedback"), None, None,
                **HIDDEN).then(user_facing(on_refresh, "reading the feedback"), None, outputs, **HIDDEN)

    def use(kind: str, method_name: str):
        return user_facing(lambda: (str(feedback.jsonl(kind)), method_name), "taking the feedback as training data")

    return [use_pairs.click(use("preference", "dpo"), None, [upload, method], **HIDDEN),
            use_rows.click(use("sft", "sft"), None, [upload, method], **HIDDEN)]
