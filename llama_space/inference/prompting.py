"""Turning a system prompt and chat history into model input with the model's own chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.errors import UserError
from llama_space.inference.tools import require_tool_support, uses_tools

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llama_space.inference.tools import ToolUse

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
    check_ending(messages)
    return messages


def check_ending(messages: list[dict]) -> None:
    """UserError unless the conversation ends where a reply is due: a user message or tool results."""
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise UserError("The conversation must end with a user message (or, after tool calls, tool results).")


def _encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: ToolUse | None) -> list[int]:
    from jinja2 import TemplateError

    extra = {"tools": tools.rendered_tools()} if tools is not None else {}
    try:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True, **extra)
    except TemplateError as exc:  # the template's own raise_exception, e.g. "roles must alternate"
        raise UserError(f"The model's chat template refused this conversation: {exc}") from None
    ids = list(encoded["input_ids"])
    prefill = tools.prefill() if tools is not None else ""
    if prefill:  # the start of the reply written for the model (tool_choice required or a named function)
        ids += tokenizer(prefill, add_special_tokens=False)["input_ids"]
    return ids


def _budget(context_window: int, max_new_tokens: int) -> int:
    budget = context_window - max_new_tokens
    if budget <= 0:
        raise UserError(f"max_new_tokens ({max_new_tokens}) must be smaller than the model's context window "
                        f"({context_window} tokens).")
    return budget


def build_raw_prompt(tokenizer: PreTrainedTokenizerBase, text: str, context_window: int,
                     max_new_tokens: int) -> Prompt:
    """Encode plain text as it is (no chat template; the tokenizer's own BOS, as vLLM does) for /v1/completions."""
    budget = _budget(context_window, max_new_tokens)
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise UserError("The prompt is empty: send some text to continue.")
    if len(ids) > budget:
        raise UserError(f"The prompt is too long: it has {len(ids)} tokens but only {budget} fit (context "
                        f"window {context_window} minus max_tokens {max_new_tokens}).")
    return Prompt(ids, 0)


def build_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict], context_window: int,
                 max_new_tokens: int, tools: ToolUse | None = None) -> Prompt:
    """Encode `messages` (with `tools`, if given, through the template's own tool support), dropping the
    oldest turns (never the system prompt or the newest user turn)."""
    budget = _budget(context_window, max_new_tokens)
    if tools is not None or uses_tools(messages):
        require_tool_support(tokenizer)
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    while True:
        ids = _encode(tokenizer, system + turns, tools)
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
