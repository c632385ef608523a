"""The shared queue's bound: how many generation requests may be in progress or waiting at once."""

from __future__ import annotations

import threading

from llama_space.errors import UserError


class QueueFullError(UserError):
    """Too many generation requests are waiting; the caller should retry later."""


class Admission:
    """A counter every route's requests pass through; the one past `limit` is refused at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.in_flight = 0

    def enter(self) -> None:
        """Take a place, or raise QueueFullError."""
        with self._lock:
            if self.in_flight >= self.limit:
                raise QueueFullError(f"The server is busy ({self.in_flight} requests in progress or waiting); "
                                     "try again in a moment.")
            self.in_flight += 1

    def leave(self) -> None:
        """Give a place back (exactly once per successful enter)."""
        with self._lock:
            self.in_flight -= 1
