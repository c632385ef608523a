"""Generated token ids to text, a piece at a time, never splitting a character.

A byte-level tokenizer (Llama 3, Qwen, SmolLM2) spells many characters, most Chinese ones among them, with two or
three tokens that each hold part of the character's UTF-8 bytes, and a SentencePiece tokenizer with byte fallback
does the same with one token per byte. Decoded alone, such a part is U+FFFD. So text is released only when the
tokens so far decode to whole characters, and a reply that ends inside a character (its token budget ran out
there) ends before it. Every backend that decodes locally streams through `ReplyStreamer`, so every surface
(the Chat tab, /chat, /v1 streams, compare) gets whole characters.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"  # what a tokenizer decodes the first bytes of an unfinished character to


class Detokenizer:
    """Token ids in, text out: `add` returns the text that became whole, `flush` what is left at the end.

    Each step decodes a short window: the tokens already released since the previous step (so a tokenizer that
    writes a token's leading space only after other text, as SentencePiece does, has that text before it) and the
    tokens not yet released; the text the window adds to the released tokens' own text is the new piece.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # the window starts here: the tokens released at the previous step
        self._read = 0  # tokens before this are released

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _pending(self) -> tuple[str, str]:
        """(the released part of the window as text, the whole window as text)."""
        return self._decode(self._ids[self._prefix:self._read]), self._decode(self._ids[self._prefix:])

    def add(self, token_ids: list[int]) -> str:
        """The text that `token_ids` complete; "" while the last character is unfinished (or nothing new shows)."""
        self._ids.extend(token_ids)
        released, window = self._pending()
        if len(window) <= len(released) or window.endswith(INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return window[len(released):]

    def flush(self) -> str:
        """The text not yet released, without the bytes of a character the reply never finished."""
        released, window = self._pending()
        self._prefix = self._read = len(self._ids)
        return window[len(released):].rstrip(INCOMPLETE)


class ReplyStreamer:
    """What a decoder streams a reply into and its consumer iterates over, from two threads.

    The decoder calls `put` with the prompt first (skipped, as `model.generate` hands it over), then with each
    generated token, and `end` once; iteration yields the Detokenizer's pieces, and "" each `timeout` seconds
    in which none comes, so a consumer waiting for the model can still be cancelled.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, timeout: float) -> None:
        self.detokenizer = Detokenizer(tokenizer)
        self.timeout = timeout
        self._pieces: queue.Queue[str | None] = queue.Queue()
        self._prompt_seen = False
        self._ended = False
        self._done = False  # the consumer has seen the end

    def put(self, value: torch.Tensor) -> None:
        """The prompt (first call) or the newly generated tokens, as a tensor of ids."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if piece := self.detokenizer.add(value.reshape(-1).tolist()):
            self._pieces.put(piece)

    def end(self) -> None:
        """The reply is over: release what is left. Only the first call counts (`generate` ends its streamer,
        and the stream ends it again however decoding ended)."""
        if self._ended:
            return
        self._ended = True
        if piece := self.detokenizer.flush():
            self._pieces.put(piece)
        self._pieces.put(None)

    def __iter__(self) -> ReplyStreamer:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        try:
            piece = self._pieces.get(timeout=self.timeout)
        except queue.Empty:
            return ""
        if piece is None:
            self._done = True
            raise StopIteration
        return piece
