"""Chat-template rendering and loss masking: only assistant replies (plus end-of-turn) are trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value the loss skips (PyTorch cross-entropy's ignore_index)


@dataclass
class Encoded:
    """One conversation rendered and tokenized in full (not truncated)."""

    text: str  # the chat-templated text the trainer sees
    input_ids: list[int]
    labels: list[int]  # input id on assistant tokens, IGNORE_INDEX elsewhere
    offsets: list[tuple[int, int]]  # character span of each token in `text`


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer we cannot mask with: no chat template (we never invent one) or no offsets."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("This model's tokenizer has no chat template, so conversations cannot be rendered "
                        "the way the model expects. Fine-tune an instruct/chat model instead.")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("This model's tokenizer cannot map tokens to text positions (it is not a fast "
                        "`tokenizers` tokenizer), which masking the prompt needs. Pick a model that has one.")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja templates raise their own errors, e.g. "roles must alternate"
        raise UserError(f"the model's chat template rejects this conversation: {exc}") from exc


def _turn_markers(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """Special-token strings; the first one after a reply (e.g. <|im_end|>, <|eot_id|>) ends that turn."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    added = [token.content for token in decoder.values() if token.special]
    return {token for token in [*tokenizer.all_special_tokens, *added] if token and token.strip()}


def _end_of_turn(text: str, pos: int, limit: int, markers: set[str]) -> int:
    """End of the reply ending at `pos`: through the first (longest at a tie) special token before `limit`."""
    tail = text[pos:limit]
    hits = [(tail.find(marker), -len(marker)) for marker in markers if marker in tail]
    if not hits:
        return pos
    index, negative_length = min(hits)
    return pos + index - negative_length


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of `text` the model must learn: each assistant reply and its end-of-turn token.

    Works for any template: the prompt before each reply is rendered with the generation prompt; when
    it is a prefix of the full text (default system prompt and headers included) the span starts right
    after it, otherwise where the reply's text is found.
    """
    markers = _turn_markers(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        prompt_end = len(prompt) if text.startswith(prompt) else None
        reply = message["content"].strip()
        found = text.find(reply, max(cursor, prompt_end or 0))
        if found < 0:
            raise UserError(f"the model's chat template alters assistant turn {i + 1}, so it cannot be masked")
        reply_end = found + len(reply)
        turn = _render(tokenizer, messages[: i + 1])
        limit = max(len(turn), reply_end) if text.startswith(turn) else len(text)
        cursor = _end_of_turn(text, reply_end, limit, markers)
        spans.append((found if prompt_end is None else prompt_end, cursor))
    return spans


def _token_offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` (the template already placed any BOS) and each token's character span."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> Encoded:
    """Render `messages` with the model's own chat template and mask everything but assistant spans."""
    check_tokenizer(tokenizer)
    text = _render(tokenizer, messages)
    spans = assistant_spans(tokenizer, messages, text)
    input_ids, offsets = _token_offsets(tokenizer, text)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(input_ids, offsets)
    ]
    return Encoded(text=text, input_ids=input_ids, labels=labels, offsets=offsets)


def tokenize_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int) -> dict:
    """Training row for one conversation: {"input_ids", "labels"} truncated to `max_length` tokens."""
    if max_length < 1:
        raise UserError(f"max_length must be at least 1, got {max_length}")
    encoded = encode_messages(tokenizer, messages)
    return {"input_ids": encoded.input_ids[:max_length], "labels": encoded.labels[:max_length]}
