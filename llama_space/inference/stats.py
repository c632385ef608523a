"""What every reply stream reports after (or while) it runs, computed the same way for every backend."""

from __future__ import annotations

import time


class ReplyStats:
    """Token counts, finish reason and timing of one reply.

    A stream calls `first_token()` when its first generated token exists and `finished()` when it ends;
    `completion_tokens` is whatever the decoder counted. tokens/s is measured from the first token
    to the last, so it is the decode speed, not diluted by queueing and prefill.
    """

    def __init__(self, prompt_tokens: int = 0, dropped_messages: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.dropped_messages = dropped_messages
        self.finish_reason = "stop"  # "stop" | "length" | "cancelled"
        self.time_to_first_token: float | None = None  # seconds from the request to its first text
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._finished_at: float | None = None

    def first_token(self) -> None:
        """The first generated token exists now (the decode clock starts)."""
        if self._first_at is None:
            self._first_at = time.perf_counter()

    def first_text(self) -> None:
        """The consumer got its first non-empty text now."""
        if self.time_to_first_token is None:
            self.time_to_first_token = time.perf_counter() - self._started

    def finished(self) -> None:
        """Decoding is over (only the first call counts)."""
        if self._finished_at is None:
            self._finished_at = time.perf_counter()

    @property
    def is_finished(self) -> bool:
        return self._finished_at is not None

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first, over the time since the first."""
        end = self._finished_at or time.perf_counter()
        first = self._first_at
        if first is None or self.completion_tokens < 2 or end <= first:
            return 0.0
        return (self.completion_tokens - 1) / (end - first)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
