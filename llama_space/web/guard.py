"""The request guard: what every request must pass before any route sees it (outermost of the app's own
middleware, installed by web/server.py).

- **Host.** Only IP addresses, localhost, this machine's name, the address the app listens on, the Space's own
  name, gradio.live (with --share) and the names in --allowed-hosts are answered. A page on `attacker.example`
  whose name the attacker re-points at 127.0.0.1 (DNS rebinding) sends `Host: attacker.example` and is refused.
- **Origin.** A browser names the page behind every cross-site request in `Origin`. A request from another site's
  page is refused unless --allowed-origins lists it, so no page elsewhere can act with a visitor's login or read
  the answers. Same-origin requests (this app's own page) and clients that are not browsers pass.
- **Forwarded headers.** `X-Forwarded-Host`/`-Proto` decide the URLs Gradio writes into its answers; they are
  believed only from the proxies in --trusted-proxies (and on a Space, which is reached only through its proxy).
- **JSON bodies.** POST / and /v1 take `application/json` only: a form or text/plain POST is the kind a browser
  sends cross-site without asking first.
- **Visitors.** The address a request comes from is the proxy's behind a proxy: there the visitor is the first
  X-Forwarded-For address. The login throttle and the upload quota count per visitor.
- **Uploads.** One upload request holds at most one file of the upload limit, and each visitor may upload at
  most UPLOAD_QUOTA_FILES such files per UPLOAD_WINDOW_SECONDS, so nobody fills the disk with scratch.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from llama_space.web.error_boundary import Failure, openai_body, rest_body

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from llama_space.settings import Settings

log = logging.getLogger(__name__)

VISITOR = "llama_space.visitor"  # scope key: the visitor's address (behind a trusted proxy, X-Forwarded-For's)
UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/upload/")
MULTIPART_SLACK = 64 * 1024  # the multipart framing around one file
UPLOAD_QUOTA_FILES = 20  # full-size uploads per visitor and window
UPLOAD_WINDOW_SECONDS = 2 * 3600  # as long as the janitor keeps an upload
MAX_VISITORS = 10_000  # visitors whose recent uploads are remembered
FORWARDED_HEADERS = (b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"x-forwarded-prefix",
                     b"forwarded", b"x-gradio-server")


def hostname(netloc: str) -> str:
    """The host part of a Host header or an origin's netloc, lower-case, without port or trailing dot."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):  # [::1]:7860
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    if netloc.count(":") == 1:
        netloc = netloc.rsplit(":", 1)[0]
    return netloc.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which Host names the app answers to and which other origins may call it."""

    def __init__(self, settings: Settings) -> None:
        names = {"localhost", socket.gethostname().lower(), settings.host.lower(), *settings.host_list}
        if os.environ.get("SPACE_HOST"):
            names.add(os.environ["SPACE_HOST"].lower())
        if settings.share:
            names.add("*.gradio.live")
        self.names = {name for name in names if not name.startswith("*.")}
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))
        self.origins = set(settings.origin_list)
        on_space = bool(os.environ.get("SPACE_ID"))
        self.proxies = {"*"} if on_space else set(settings.proxy_list)

    def host_allowed(self, host: str) -> bool:
        name = hostname(host)
        return not host or _is_ip(name) or name in self.names or name.endswith(self.suffixes)

    def origin_allowed(self, origin: str, hosts: list[str]) -> bool:
        """Same origin as the request (scheme aside: TLS may end at a proxy) or listed."""
        netloc = origin.partition("://")[2].rstrip("/").lower()
        return origin.rstrip("/") in self.origins or (bool(netloc) and netloc in [h.lower() for h in hosts if h])

    def trusts(self, client: str) -> bool:
        return "*" in self.proxies or client in self.proxies


class UploadQuota:
    """Bytes each visitor uploaded within the window (the oldest visitors are forgotten past MAX_VISITORS)."""

    def __init__(self, per_window: int, clock=time.monotonic) -> None:
        self.per_window, self.clock = per_window, clock
        self._seen: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def used(self, visitor: str) -> int:
        recent = self._seen.get(visitor)
        if recent is None:
            return 0
        start = self.clock() - UPLOAD_WINDOW_SECONDS
        while recent and recent[0][0] < start:
            recent.popleft()
        return sum(size for _, size in recent)

    def add(self, visitor: str, size: int) -> None:
        self._seen.setdefault(visitor, deque()).append((self.clock(), size))
        self._seen.move_to_end(visitor)
        while len(self._seen) > MAX_VISITORS:
            self._seen.popitem(last=False)


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


def _json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class RequestGuard:
    """ASGI middleware applying the module's rules; a refused request gets a 4xx that says what to change."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.policy = HostPolicy(settings)
        self.upload_limit = settings.max_upload_mb * 1024 * 1024 + MULTIPART_SLACK
        self.quota = UploadQuota(UPLOAD_QUOTA_FILES * settings.max_upload_mb * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = visitor = (scope.get("client") or ("", 0))[0]
        if self.policy.trusts(client):
            visitor = _headers(scope).get("x-forwarded-for", "").split(",")[0].strip() or client
        else:
            scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", [])
                                          if k.lower() not in FORWARDED_HEADERS]}
        scope = {**scope, VISITOR: visitor}
        headers, path, method = _headers(scope), scope.get("path", ""), scope.get("method", "GET")
        refusal = self._refusal(headers, path, method)
        if refusal is not None:
            log.info("refused %s %s from %s: %s", method, path, client, refusal.message)
            await _refuse(scope, send, path, refusal)
        elif method == "POST" and path in UPLOAD_PATHS:
            await self._upload(scope, receive, send, headers, visitor)
        else:
            await self.app(scope, receive, send)

    def _refusal(self, headers: dict[str, str], path: str, method: str) -> Failure | None:
        host = headers.get("host", "")
        if not self.policy.host_allowed(host):
            return Failure(400, f"This app does not answer to the name {hostname(host)!r}. If it is served under "
                                "that name, start it with --allowed-hosts NAME (LLAMA_SPACE_ALLOWED_HOSTS).",
                           code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self.policy.origin_allowed(origin, [host, headers.get("x-forwarded-host", "")]):
            return Failure(403, f"Requests from pages on {origin} are refused: only this app's own page may call "
                                "it. To allow that site, start the app with --allowed-origins ORIGIN "
                                "(LLAMA_SPACE_ALLOWED_ORIGINS).", code="origin_not_allowed")
        if method == "POST" and (path == "/" or path.startswith("/v1/")) \
                and not _json_type(headers.get("content-type", "")):
            return Failure(415, "The body must be JSON sent with 'Content-Type: application/json' "
                                "(curl: -H 'Content-Type: application/json').", code="unsupported_media_type")
        return None

    async def _upload(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                      visitor: str) -> None:
        """Pass an upload on while it stays within one file's limit and the visitor's quota; refuse it (413/429)
        as soon as it does not, before Gradio writes more of it to disk."""
        left = self.quota.per_window - self.quota.used(visitor)
        limit = min(self.upload_limit, left)
        declared = headers.get("content-length", "")
        if left <= 0:
            await _refuse(scope, send, "", _quota_failure(self.quota.per_window))
            return
        if declared.isdigit() and int(declared) > limit:
            await _refuse(scope, send, "", _upload_failure(self.upload_limit, self.quota.per_window, limit))
            return
        state = {"received": 0, "refused": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["refused"] = True
                    if not state["started"]:
                        await _refuse(scope, send, "", _upload_failure(self.upload_limit, self.quota.per_window,
                                                                       limit))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"]:
                return  # the refusal was sent; Gradio's own answer to the cut-off upload is dropped
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise
            # Gradio's parser fails on the disconnect this guard gave it; the client has its 413 already.
        finally:
            self.quota.add(visitor, state["received"])


def _upload_failure(file_limit: int, quota: int, limit: int) -> Failure:
    if limit < file_limit:
        return _quota_failure(quota)
    return Failure(413, f"An upload may hold one file of at most {file_limit // (1024 * 1024)} MB "
                        "(LLAMA_SPACE_MAX_UPLOAD_MB); upload files one at a time.", code="upload_too_large")


def _quota_failure(quota: int) -> Failure:
    return Failure(429, f"You uploaded {quota // (1024 * 1024)} MB within {UPLOAD_WINDOW_SECONDS // 3600} hours, "
                        "the most one visitor may; try again later.", code="upload_quota")


async def _refuse(scope: Scope, send: Send, path: str, fail: Failure) -> None:
    """Refuse a request (or close a websocket) with `fail`; an upload quota refusal says when to come back."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": fail.message[:120]})
        return
    await send_failure(send, path, fail, UPLOAD_WINDOW_SECONDS // 4 if fail.status == 429 else None)


async def send_failure(send: Send, path: str, fail: Failure, retry_after: int | None = None) -> None:
    """Answer an HTTP request with `fail` in the route's own error shape (OpenAI's under /v1)."""
    body = openai_body(fail) if path == "/v1" or path.startswith("/v1/") else rest_body(fail)
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": fail.status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
