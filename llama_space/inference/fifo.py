"""A lock granted in the order it was asked for: requests waiting for the model are served first come, first served."""

from __future__ import annotations

import collections
import threading
from typing import Self

STOP_POLL_SECONDS = 0.05  # how soon a waiter notices that its request was stopped


class Turn:
    """One place in a FairLock's queue; `wait` until it holds the lock."""

    def __init__(self, lock: FairLock) -> None:
        self._lock = lock
        self._granted = threading.Event()

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until this turn holds the lock (True), or `stop` is set first (False: left the queue)."""
        if stop is None:
            self._granted.wait()
            return True
        while not stop.is_set():
            if self._granted.wait(STOP_POLL_SECONDS):
                return True
        self.cancel()
        return False

    def cancel(self) -> None:
        """Leave the queue; a turn already granted passes the lock on to the next one."""
        self._lock._leave(self)


class FairLock:
    """A mutex whose waiters get it strictly in the order they asked (threading.Lock promises no order).

    `request()` takes a place in the queue at once, so a caller can queue in its own thread and wait
    in another. Usable as a context manager like threading.Lock.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # guards the fields below, never held while waiting
        self._queue: collections.deque[Turn] = collections.deque()  # the holder first, then the waiters

    def request(self) -> Turn:
        """Queue for the lock; the turn is granted at once when nobody holds it or waits."""
        turn = Turn(self)
        with self._mutex:
            self._queue.append(turn)
            if len(self._queue) == 1:
                turn._granted.set()
        return turn

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for the lock in arrival order; False when `stop` was set first."""
        return self.request().wait(stop)

    def release(self) -> None:
        """Hand the lock to the longest waiter (or free it)."""
        with self._mutex:
            if not self._queue or not self._queue[0]._granted.is_set():
                raise RuntimeError("release of an unheld FairLock")
            self._grant_next()

    def locked(self) -> bool:
        """Whether someone holds the lock."""
        with self._mutex:
            return bool(self._queue) and self._queue[0]._granted.is_set()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _leave(self, turn: Turn) -> None:
        with self._mutex:
            if turn._granted.is_set():  # granted just as it gave up: it holds the lock, so pass it on
                if self._queue and self._queue[0] is turn:
                    self._grant_next()
            elif turn in self._queue:
                self._queue.remove(turn)

    def _grant_next(self) -> None:
        self._queue.popleft()
        if self._queue:
            self._queue[0]._granted.set()
