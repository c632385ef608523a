"""Turning a system prompt and chat history into model input with the model's own chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


@dataclass
class Prompt:
    """Token ids ready for generation and how many old messages were dropped to fit the context."""

    input_ids: list[int]
    dropped_messages: int


def normalize_messages(history: list[dict] | None, message: str | None = None,
                       system_prompt: str = "") -> list[dict]:
    """Validated [{role, content}] list: system prompt first, then history, then the new user message."""
    messages: list[dict] = []
    if system_prompt and system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    for i, item in enumerate(history or []):
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise UserError(f"history item {i} must be a dict with role system, user or assistant")
        content = item.get("content")
        if isinstance(content, list):  # Gradio multimodal content: keep the text parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise UserError(f"history item {i} must have text content")
        messages.append({"role": item["role"], "content": content})
    if message is not None:
        if not isinstance(message, str) or not message.strip():
            raise UserError("The message is empty: type something to send.")
        messages.append({"role": "user", "content": message})
    if not messages or messages[-1]["role"] != "user":
        raise UserError("The conversation must end with a user message.")
    return messages


def _encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    from jinja2 import TemplateError

    try:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)
    except TemplateError as exc:  # the template's own raise_exception, e.g. "roles must alternate"
        raise UserError(f"The model's chat template refused this conversation: {exc}") from None
    return list(encoded["input_ids"])


def build_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict], context_window: int,
                 max_new_tokens: int) -> Prompt:
    """Encode `messages`, dropping the oldest turns (never the system prompt or the newest user turn)."""
    budget = context_window - max_new_tokens
    if budget <= 0:
        raise UserError(f"max_new_tokens ({max_new_tokens}) must be smaller than the model's context window "
                        f"({context_window} tokens).")
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    while True:
        ids = _encode(tokenizer, system + turns)
        if len(ids) <= budget:
            return Prompt(ids, dropped)
        if len(turns) <= 1:
            raise UserError(
                f"The message is too long: the prompt needs {len(ids)} tokens but only {budget} fit "
                f"(context window {context_window} minus max_new_tokens {max_new_tokens}). "
                "Shorten the message, the system prompt or max_new_tokens.")
        # Drop the oldest user turn together with the replies that followed it.
        cut = 1
        while cut < len(turns) - 1 and turns[cut]["role"] != "user":
            cut += 1
        dropped += cut
        turns = turns[cut:]
