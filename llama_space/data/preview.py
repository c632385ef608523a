"""HTML preview of one training row: the chat-templated text with trained spans marked."""

from __future__ import annotations

import html
import itertools
from typing import TYPE_CHECKING

from llama_space.data.tokenize import IGNORE_INDEX, Encoded, encode_messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TRAINED = '<mark class="trained" title="trained: the loss is computed here" style="background:#fde68a">{}</mark>'
MASKED = '<span class="masked" title="prompt: masked, no loss" style="opacity:0.55">{}</span>'
CUT = '<span class="truncated" style="color:#b91c1c">[… {} more tokens cut off by max_length={}]</span>'


def preview_html(encoded: Encoded, max_length: int) -> str:
    """HTML of an encoded row as the trainer sees it, truncated to `max_length` tokens."""
    kept = min(len(encoded.input_ids), max_length)
    runs = [(trained, list(group)) for trained, group in itertools.groupby(
        range(kept), key=lambda k: encoded.labels[k] != IGNORE_INDEX)]
    # Each run covers the text from its first token to the next run's first token, so no character
    # the template produced (e.g. whitespace a tokenizer leaves outside offsets) goes missing.
    starts = [0] + [encoded.offsets[tokens[0]][0] for _, tokens in runs[1:]]
    ends = starts[1:] + [encoded.offsets[kept - 1][1] if kept else 0]
    parts = [(TRAINED if trained else MASKED).format(html.escape(encoded.text[start:end]))
             for (trained, _), start, end in zip(runs, starts, ends)]
    if len(encoded.input_ids) > kept:
        parts.append(CUT.format(len(encoded.input_ids) - kept, max_length))
    return '<pre class="llama-space-preview" style="white-space:pre-wrap">' + "".join(parts) + "</pre>"


def render_preview(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int) -> str:
    """HTML of one row rendered with the model's chat template: assistant spans in <mark>, the prompt dimmed."""
    return preview_html(encode_messages(tokenizer, messages), max_length)
