"""Slowing down password and API-key guessing (installed by web/server.py, in front of the login checks).

A request *tries* credentials when it carries an `Authorization` header or posts the login form. A client (by
address) whose tries failed FREE_FAILURES times in a row must then wait before its next try: BASE_DELAY seconds,
doubling with each further failure up to MAX_DELAY. A try while it must wait is answered 429 with Retry-After
and is not checked at all, so guessing drops from about a thousand a second to a few an hour. A success clears
the client's record. Requests without credentials (browsing the login page) are never slowed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.web.error_boundary import Failure
from llama_space.web.guard import VISITOR, send_failure

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

FREE_FAILURES = 5
BASE_DELAY = 1.0
MAX_DELAY = 300.0
FORGET_AFTER = 3600.0  # a client quiet this long starts afresh
MAX_CLIENTS = 10_000  # records kept (the oldest go first)
LOGIN_PATHS = ("/login", "/login/")


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


class FailureLedger:
    """Failed credential tries per client and how long each must wait."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds `client` must still wait before its next try (0: it may try now)."""
        record = self._records.get(client)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last > FORGET_AFTER:
            del self._records[client]
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failed(self, client: str) -> None:
        record = self._records.setdefault(client, _Record())
        self._records.move_to_end(client)
        record.failures += 1
        record.last = self.clock()
        if record.failures >= FREE_FAILURES:
            delay = min(MAX_DELAY, BASE_DELAY * 2 ** (record.failures - FREE_FAILURES))
            record.blocked_until = record.last + delay
        while len(self._records) > MAX_CLIENTS:
            self._records.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._records.pop(client, None)

    def forget(self) -> None:
        """Clear every record (an operator lifting a lock-out)."""
        self._records.clear()


def _is_failure(path: str, status: int) -> bool:
    return status == 401 or (path in LOGIN_PATHS and status == 400)


class LoginThrottle:
    """ASGI middleware applying the ledger to every request that tries credentials."""

    def __init__(self, app: ASGIApp, ledger: FailureLedger | None = None) -> None:
        self.app = app
        self.ledger = ledger or FailureLedger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope.get("path", ""), scope.get("method", "GET")
        tries = scope["type"] == "http" and (
            any(key.lower() == b"authorization" for key, _ in scope.get("headers", []))
            or (method == "POST" and path in LOGIN_PATHS))
        if not tries:
            await self.app(scope, receive, send)
            return
        client = scope.get(VISITOR) or (scope.get("client") or ("", 0))[0]
        wait = self.ledger.wait(client)
        if wait > 0:
            await _too_many(send, path, wait)
            return

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if _is_failure(path, status):
                    self.ledger.failed(client)
                elif status < 400:
                    self.ledger.succeeded(client)
            await send(message)

        await self.app(scope, receive, watching_send)


async def _too_many(send: Send, path: str, wait: float) -> None:
    seconds = math.ceil(wait)
    fail = Failure(429, f"Too many failed logins from your address: wait {seconds} seconds, then try again with "
                        "the right user name, password or API key.", code="too_many_failed_logins")
    await send_failure(send, path, fail, retry_after=seconds)
