"""Chat-template rendering and loss masking: only assistant replies (plus end-of-turn) are trained.

A reply's trained span starts where the model's prompt for it ends (the conversation before it rendered with
the generation prompt, when that is a prefix of the text) and runs through the first special token after it
within its turn (the conversation through it rendered). Rendering those prefixes for every reply would cost the
square of the turns, so a conversation is rendered once more with a placeholder for each message's content:
that shows where every content lies and which text around it is the template's own. A reply's prefixes are
rendered only when no earlier reply of the row had the same template text before and after it; otherwise its
prompt and turn end at the same distances from its content as that reply's. So masking renders each row about
three times in all (linear in its turns); a template that writes contents other than as they are or trimmed,
or whose text around replies differs every time, falls back to prefix renderings (quadratic in the turns, which
data/limits.py bounds). `Masker.work` counts what was rendered and tokenized.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value the loss skips (PyTorch cross-entropy's ignore_index)
PLACEHOLDER_MARKS = range(0xE000, 0xF900)  # private-use characters; one absent from the text marks placeholders


@dataclass
class Encoded:
    """One conversation rendered and tokenized in full (not truncated)."""

    text: str  # the chat-templated text the trainer sees
    input_ids: list[int]
    labels: list[int]  # input id on assistant tokens, IGNORE_INDEX elsewhere
    offsets: list[tuple[int, int]]  # character span of each token in `text`


@dataclass
class _Bounds:
    """Where the template puts reply i: the end of its prompt (None: not a prefix of the text) and of its turn."""

    prompt_end: int | None
    turn_end: int | None  # None: the turn is not a prefix of the text; its end-of-turn is searched to the text's end


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer we cannot mask with: no chat template (we never invent one) or no offsets."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("This model's tokenizer has no chat template, so conversations cannot be rendered "
                        "the way the model expects. Fine-tune an instruct/chat model instead.")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("This model's tokenizer cannot map tokens to text positions (it is not a fast "
                        "`tokenizers` tokenizer), which masking the prompt needs. Pick a model that has one.")


def _turn_markers(tokenizer: PreTrainedTokenizerBase) -> re.Pattern | None:
    """Special-token strings, longest first; the first one after a reply (e.g. <|im_end|>, <|eot_id|>) ends it."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    added = [token.content for token in decoder.values() if token.special]
    markers = {token for token in [*tokenizer.all_special_tokens, *added] if token and token.strip()}
    if not markers:
        return None
    return re.compile("|".join(re.escape(marker) for marker in sorted(markers, key=len, reverse=True)))


class Masker:
    """Renders and masks conversations with one tokenizer's chat template.

    `work` counts the characters it rendered and tokenized, so a caller can bound the total.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.markers = _turn_markers(tokenizer)
        self.work = 0

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        """The conversation as the model's chat template writes it."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja templates raise their own errors, e.g. "roles must alternate"
            raise UserError(f"the model's chat template rejects this conversation: {exc}") from exc
        self.work += len(text)
        return text

    def encode(self, messages: list[dict]) -> Encoded:
        """Render `messages` and label the assistant spans' tokens (see the module docstring)."""
        text = self.render(messages)
        starts, ends = _union(self.assistant_spans(messages, text))
        input_ids, offsets = self._tokens(text)
        labels = []
        for token, (begin, _) in zip(input_ids, offsets):
            k = bisect.bisect_right(starts, begin) - 1  # the last span starting at or before the token
            labels.append(token if k >= 0 and begin < ends[k] else IGNORE_INDEX)
        return Encoded(text=text, input_ids=input_ids, labels=labels, offsets=offsets)

    def assistant_spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        """Character spans of `text` the model must learn: each assistant reply and its end-of-turn token."""
        replies = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        layout = _Layout.of(self, messages, text) if len(replies) > 1 else None
        spans, cursor = [], 0
        for i in replies:
            bounds = layout.bounds(i) if layout else None
            if bounds is None:
                bounds = self._exact_bounds(messages, i, text)
                if layout:
                    layout.learn(i, bounds)
            start, cursor = self._span(messages, i, text, bounds, cursor)
            spans.append((start, cursor))
        return spans

    def _exact_bounds(self, messages: list[dict], i: int, text: str) -> _Bounds:
        prompt = self.render(messages[:i], generation_prompt=True)
        turn = text if i + 1 == len(messages) else self.render(messages[: i + 1])
        return _Bounds(len(prompt) if text.startswith(prompt) else None,
                       len(turn) if text.startswith(turn) else None)

    def _span(self, messages: list[dict], i: int, text: str, bounds: _Bounds, cursor: int) -> tuple[int, int]:
        reply = messages[i]["content"].strip()
        found = text.find(reply, max(cursor, bounds.prompt_end or 0))
        if found < 0:
            raise UserError(f"the model's chat template alters assistant turn {i + 1}, so it cannot be masked")
        reply_end = found + len(reply)
        limit = len(text) if bounds.turn_end is None else max(bounds.turn_end, reply_end)
        marker = self.markers.search(text, reply_end, limit) if self.markers else None
        return (found if bounds.prompt_end is None else bounds.prompt_end, marker.end() if marker else reply_end)

    def _tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text` (the template already placed any BOS) and each token's character span."""
        self.work += len(text)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        split_special = bool(getattr(self.tokenizer, "split_special_tokens", False))
        if (backend is not None and backend.truncation is None and backend.padding is None
                and getattr(backend, "encode_special_tokens", None) == split_special):
            # The `tokenizers` call itself, as the tokenizer's __call__ makes it, without its per-call overhead.
            encoding = backend.encode(text, add_special_tokens=False)
            return encoding.ids, encoding.offsets
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]


@dataclass
class _Layout:
    """Where each message's content lies in the text, the template's own text around each one, and where the
    prompt and the turn of a reply end relative to its content, learned per template text around replies."""

    regions: list[tuple[int, int]]  # (start, end) of message k's content as rendered (as is, or trimmed)
    between: list[str]  # between[k]: the template's text before message k's content; between[-1]: after the last
    leads: dict[str, int | None] = field(default_factory=dict)  # text before a reply -> its prompt's end, back
    trails: dict[str, int | None] = field(default_factory=dict)  # text after a reply -> its turn's end, onward

    @classmethod
    def of(cls, masker: Masker, messages: list[dict], text: str) -> _Layout | None:
        """The layout from one rendering with a placeholder for each content; None when the text does not
        consist of the template's text and the contents as they are or trimmed, in order."""
        used = set(text)
        mark = next((chr(code) for code in PLACEHOLDER_MARKS if chr(code) not in used), None)
        if mark is None:
            return None
        placeholders = [{**message, "content": f"{mark}{k}{mark}"} for k, message in enumerate(messages)]
        try:
            skeleton = masker.render(placeholders)
        except UserError:
            return None
        pieces = re.split(f"{mark}(\\d+){mark}", skeleton)
        between = pieces[0::2]
        if pieces[1::2] != [str(k) for k in range(len(messages))]:
            return None
        regions, pos = [], 0
        for k, message in enumerate(messages):
            if not text.startswith(between[k], pos):
                return None
            pos += len(between[k])
            content = message["content"]
            written = next((form for form in (content, content.strip(), content.lstrip(), content.rstrip())
                            if text.startswith(form, pos) and text.startswith(between[k + 1], pos + len(form))), None)
            if written is None:
                return None
            regions.append((pos, pos + len(written)))
            pos += len(written)
        return cls(regions, between) if pos + len(between[-1]) == len(text) else None

    def _last(self, i: int) -> bool:
        return i == len(self.regions) - 1

    def learn(self, i: int, bounds: _Bounds) -> None:
        """Remember how far reply i's bounds lie from its content, when they lie in the template's text around it."""
        start, end = self.regions[i]
        lead = None if bounds.prompt_end is None else start - bounds.prompt_end
        if lead is None or 0 <= lead <= len(self.between[i]):
            self.leads.setdefault(self.between[i], lead)
        trail = None if bounds.turn_end is None else bounds.turn_end - end
        if not self._last(i) and (trail is None or 0 <= trail <= len(self.between[i + 1])):
            self.trails.setdefault(self.between[i + 1], trail)

    def bounds(self, i: int) -> _Bounds | None:
        """Reply i's bounds as learned from a reply with the same template text before it and after it (the last
        reply's turn is the whole text); None when none was seen yet."""
        start, end = self.regions[i]
        if self.between[i] not in self.leads or not (self._last(i) or self.between[i + 1] in self.trails):
            return None
        lead = self.leads[self.between[i]]
        prompt_end = None if lead is None else start - lead
        if self._last(i):
            return _Bounds(prompt_end, end + len(self.between[-1]))
        trail = self.trails[self.between[i + 1]]
        return _Bounds(prompt_end, None if trail is None else end + trail)


def _union(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The starts and ends of the disjoint spans that cover exactly what `spans` cover, in order."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(span for span in spans if span[0] < span[1]):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> Encoded:
    """Render `messages` with the model's own chat template and mask everything but assistant spans."""
    return Masker(tokenizer).encode(messages)


def tokenize_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int) -> dict:
    """Training row for one conversation: {"input_ids", "labels"} truncated to `max_length` tokens."""
    if max_length < 1:
        raise UserError(f"max_length must be at least 1, got {max_length}")
    encoded = encode_messages(tokenizer, messages)
    return {"input_ids": encoded.input_ids[:max_length], "labels": encoded.labels[:max_length]}
