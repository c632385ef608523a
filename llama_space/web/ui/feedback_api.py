"""Named Gradio endpoints for feedback, each one call into service.feedback.Feedback:

/record_feedback(kind, conversation, reply, adapter="", edited="", other_replies=[], generation={}) -> {"id", "kind",
"counts"}; /feedback_dataset(kind="preference") -> {"counts", "rows"}; /clear_feedback() -> {"cleared"}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.web.error_boundary import user_facing

if TYPE_CHECKING:
    from llama_space.service.feedback import Feedback


def register_feedback_api(feedback: Feedback) -> None:
    """The named endpoints of this module inside the current Blocks."""

    def record_feedback(kind: str, conversation: list[dict], reply: str, adapter: str = "", edited: str = "",
                        other_replies: list[str] = [], generation: dict = {}) -> dict:  # noqa: B006
        """Mark a reply: kind "up" or "down" (thumbs), "edit" (edited: the reply it should have been) or "pick"
        (the reply is better than each of other_replies). Saved with the conversation, adapter and generation
        settings; only where changes are allowed. Returns {"id", "kind", "counts"}.

        Args:
            kind: up, down, edit or pick
            conversation: the messages the reply answers, [{role, content}] ending with the user turn
            reply: the reply the model gave (for a pick: the better one)
            adapter: the adapter that gave it ("" or "base" for the base model)
            edited: for kind edit, the reply it should have been
            other_replies: for kind pick, the replies it is better than
            generation: the generation settings used (max_new_tokens, temperature, ...)
        """
        return feedback.record(kind, conversation, reply, adapter, edited, other_replies, generation)

    def feedback_dataset(kind: str = "preference") -> dict:
        """The collected feedback as a dataset: kind "preference" gives {prompt, chosen, rejected} pairs (picks, and
        edits with the edited reply chosen over the original) for method dpo or orpo; "sft" gives {messages} rows
        (thumbs up, and edits). Returns {"counts", "rows"}; write the rows as JSONL to train on them.

        Args:
            kind: preference or sft
        """
        return feedback.private_dataset(kind)

    def clear_feedback() -> dict:
        """Delete every feedback mark; returns {"cleared": how many}."""
        return feedback.clear()

    for fn in (record_feedback, feedback_dataset, clear_feedback):
        gr.api(user_facing(fn, f"running {fn.__name__}"), api_name=fn.__name__)
