"""Turning a system prompt and chat history into model input with the model's own chat template."""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.errors import UserError
from llama_space.inference.tools import require_tool_support, uses_tools

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llama_space.inference.tools import ToolUse

ROLES = ("system", "user", "assistant")
FIT_TRIES = 4  # template calls around the guessed cut before settling for the newest message alone


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
    oldest turns (never the system prompt or the newest user turn).

    The work is bounded by the context window, not by what was sent: turns that cannot fit by their length
    alone (`_least_tokens`) are dropped, and a system prompt and newest message that cannot are refused,
    before any tokenization, so no more than about (context window x the longest vocabulary entry)
    characters are ever encoded; and the template runs a few times however many turns are dropped
    (encoding again after each dropped turn took minutes for a long history).
    """
    budget = _budget(context_window, max_new_tokens)
    if tools is not None or uses_tools(messages):
        require_tool_support(tokenizer)
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    cuts = _possible_cuts(tokenizer, system, turns, budget)
    if not cuts:  # not even the system prompt and the newest message can fit: refused before tokenizing them
        least = sum(_least_tokens(tokenizer, m) for m in system + turns[-1:])
        raise _too_long(f"at least {least}", budget, context_window, max_new_tokens)
    dropped = cuts[0]
    ids = _encode(tokenizer, system + turns[dropped:], tools)
    if len(ids) > budget and len(cuts) > 1:
        dropped, ids = _fit(tokenizer, system, turns, cuts, budget, tools, len(ids))
    if len(ids) > budget:
        raise _too_long(str(len(ids)), budget, context_window, max_new_tokens)
    return Prompt(ids, dropped)


def _too_long(needed: str, budget: int, context_window: int, max_new_tokens: int) -> UserError:
    return UserError(f"The message is too long: the prompt needs {needed} tokens but only {budget} fit "
                     f"(context window {context_window} minus max_new_tokens {max_new_tokens}). "
                     "Shorten the message, the system prompt or max_new_tokens.")


def _possible_cuts(tokenizer: PreTrainedTokenizerBase, system: list[dict], turns: list[dict],
                   budget: int) -> list[int]:
    """Where the kept turns may start, oldest first: the first turn, each later user turn (an older user turn
    goes with the replies that followed it) and at the latest the newest message; without those that
    certainly keep too much by `_least_tokens`."""
    after = [0] * (len(turns) + 1)  # after[i]: the least tokens turns[i:] take
    for i in range(len(turns) - 1, -1, -1):
        after[i] = after[i + 1] + _least_tokens(tokenizer, turns[i])
    room = budget - sum(_least_tokens(tokenizer, m) for m in system)
    cuts = [0, *(i for i in range(1, len(turns) - 1) if turns[i]["role"] == "user"), max(len(turns) - 1, 0)]
    return [cut for cut in dict.fromkeys(cuts) if after[cut] <= room]


_CHARS_PER_TOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _least_tokens(tokenizer: PreTrainedTokenizerBase, message: dict) -> int:
    """A lower bound on the tokens `message` takes in any chat template, from its length alone: its role
    marker at least one, its text (bar the whitespace templates trim) at least one per as many characters
    as the tokenizer's longest vocabulary entry holds (byte-level and SentencePiece entries are at least as
    long as the text they stand for)."""
    if tokenizer not in _CHARS_PER_TOKEN:
        _CHARS_PER_TOKEN[tokenizer] = max(1, max(map(len, tokenizer.get_vocab()), default=1))
    content = message.get("content")
    chars = len(content.strip()) if isinstance(content, str) else 0
    return 1 + -(-chars // _CHARS_PER_TOKEN[tokenizer])


def _fit(tokenizer: PreTrainedTokenizerBase, system: list[dict], turns: list[dict], cuts: list[int], budget: int,
         tools: ToolUse | None, longest: int) -> tuple[int, list[int]]:
    """(cut, ids) for the most turns from a cut point on that fit `budget`, the turns from `cuts[0]` on taking
    `longest` tokens, too many: a guess, then a few template calls around it (the newest message alone when
    they do not settle it)."""
    encoded = functools.cache(lambda cut: _encode(tokenizer, system + turns[cut:], tools))
    last = len(cuts) - 1
    if len(encoded(cuts[last])) > budget:
        return cuts[last], encoded(cuts[last])
    i = _guess(tokenizer, turns, cuts, budget, longest, len(encoded(cuts[last])))
    for _ in range(FIT_TRIES):  # cuts[0] is too long and cuts[last] fits: i stays between them
        if len(encoded(cuts[i])) > budget:
            i += 1
        elif i > 1 and len(encoded(cuts[i - 1])) <= budget:
            i -= 1
        else:
            break
    if len(encoded(cuts[i])) > budget:
        i = last
    return cuts[i], encoded(cuts[i])


def _guess(tokenizer: PreTrainedTokenizerBase, turns: list[dict], cuts: list[int], budget: int, longest: int,
           newest: int) -> int:
    """The index in `cuts` of the oldest cut point whose turns should fit: each turn costs its text's tokens
    (one tokenizer call for all) plus the template's tokens per message, measured as what the turns from
    `cuts[0]` take (`longest`) beyond the newest message alone (`newest`) and their texts."""
    texts = [m["content"] if isinstance(m.get("content"), str) else "" for m in turns[cuts[0]:-1]]
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    per_message = (longest - newest - sum(counts)) / len(texts)
    i, size = len(cuts) - 1, float(newest)
    while i > 1:
        size += sum(counts[k - cuts[0]] + per_message for k in range(cuts[i - 1], cuts[i]))
        if size > budget:
            break
        i -= 1
    return i
