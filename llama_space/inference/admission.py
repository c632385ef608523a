"""The request queue every chat backend puts its replies through: how many generation requests may be in
progress or waiting at once, and how much KV cache their prompts and replies may take together: what the memory free
after loading holds (`set_capacity`, inference/context.py), less while a training job shares the device with chat
(`bound_tokens`).

The cache a set of replies holds is what the backend says (`measure`): a batch engine keeps its rows left-padded to
the longest one (rows x the longest row's prompt plus max_new_tokens), a serial decoder one reply at a time.
Each backend holds one (`Admission.for_settings`) and starts every reply through `admit`, at the point where it
knows the reply's size (the in-process model after building the prompt, before queueing it for the model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from llama_space.errors import QueueFullError, UserError

if TYPE_CHECKING:
    from llama_space.settings import Settings

MEMORY_WAIT = 20.0  # seconds a request that would fit waits for others to free KV cache before it is refused
Reply = TypeVar("Reply")


class MemoryBoundError(UserError):
    """A request needs more KV cache than the memory left beside the training job can ever hold."""


def padded_batch(sizes: Sequence[int]) -> int:
    """KV cache tokens of a batch whose rows are padded to the longest: rows x the longest."""
    return len(sizes) * max(sizes, default=0)


def one_at_a_time(sizes: Sequence[int]) -> int:
    """KV cache tokens of replies decoded one at a time: the largest."""
    return max(sizes, default=0)


class Admission:
    """A gate every route's requests pass through: the one past `limit` is refused at once, and with a token
    bound set (`bound_tokens`) a request waits until its tokens fit beside the others admitted."""

    def __init__(self, limit: int, memory_wait: float = MEMORY_WAIT) -> None:
        self.limit = limit
        self.memory_wait = memory_wait
        self._cond = threading.Condition()
        self.in_flight = 0
        self._sizes: list[int] = []  # prompt plus max_new_tokens of every admitted request
        self.held: Callable[[Sequence[int]], int] = sum  # KV cache tokens those requests may hold (see measure)
        self.capacity: int | None = None  # what the memory free after loading holds; None: not this backend's concern
        self.job_limit: int | None = None  # what is left beside a training job sharing the device; None: no job

    @classmethod
    def for_settings(cls, settings: Settings) -> Admission:
        """The queue the settings ask for: `concurrency` requests decoding and `max_queue` more waiting."""
        return cls(settings.max_queue + settings.concurrency)

    def admit(self, tokens: int, start: Callable[[Callable[[], None]], Reply]) -> Reply:
        """Take a place for a reply of up to `tokens` tokens (see `enter`), then `start(leave)` it: the reply
        calls `leave()` once when it ends, however it ends; if `start` raises, the place comes back at once."""
        self.enter(tokens)
        try:
            return start(lambda: self.leave(tokens))
        except BaseException:
            self.leave(tokens)
            raise

    @property
    def tokens_in_use(self) -> int:
        """KV cache tokens the admitted requests may hold, measured as the backend keeps them."""
        return self.held(self._sizes)

    @property
    def token_limit(self) -> int | None:
        """KV cache tokens all admitted requests may hold together (None: no bound)."""
        limits = [limit for limit in (self.capacity, self.job_limit) if limit is not None]
        return min(limits) if limits else None

    def measure(self, held: Callable[[Sequence[int]], int]) -> None:
        """How the backend keeps its replies' caches: `held(sizes)` tokens for requests of `sizes` tokens."""
        self.held = held

    def set_capacity(self, tokens: int | None) -> None:
        """Let admitted requests hold at most `tokens` of KV cache together, always (None: no bound)."""
        with self._cond:
            self.capacity = tokens
            self._cond.notify_all()

    def bound_tokens(self, tokens: int | None) -> None:
        """Let admitted requests hold at most `tokens` of KV cache together beside a training job (None lifts it)."""
        with self._cond:
            self.job_limit = None if tokens is None else max(0, int(tokens))
            self._cond.notify_all()

    def enter(self, tokens: int = 0) -> None:
        """Take a place for a request of up to `tokens` tokens (its prompt plus max_new_tokens).

        QueueFullError when the queue is full, or when the memory beside a training job stays taken by other
        replies for `memory_wait` seconds; MemoryBoundError when the request alone can never fit.
        """
        with self._cond:
            if self.in_flight >= self.limit:
                raise QueueFullError(f"The server is busy ({self.in_flight} requests in progress or waiting); "
                                     "try again in a moment.")
            self.in_flight += 1
            try:
                self._wait_for_room(tokens)
            except BaseException:
                self.in_flight -= 1
                raise
            self._sizes.append(tokens)

    def _wait_for_room(self, tokens: int) -> None:
        deadline = time.monotonic() + self.memory_wait
        while (limit := self.token_limit) is not None and self.held([*self._sizes, tokens]) > limit:
            beside = "beside the training job" if limit == self.job_limit else "for chat on this server"
            if self.held([tokens]) > limit:
                raise MemoryBoundError(
                    f"This request needs KV cache for {tokens} tokens (prompt plus max_new_tokens), but only "
                    f"{limit} fit in the memory {beside}: lower max_new_tokens or shorten the conversation"
                    + (", or wait for the job to finish." if limit == self.job_limit else "."))
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueFullError(f"The server is busy: the memory {beside} is taken by other replies "
                                     f"({self.tokens_in_use} of {limit} tokens); try again in a moment.")
            self._cond.wait(left)

    def leave(self, tokens: int = 0) -> None:
        """Give a place back (exactly once per successful enter, with the same `tokens`)."""
        with self._cond:
            self.in_flight -= 1
            self._sizes.remove(tokens)
            self._cond.notify_all()
