"""Safe sharing: one login in front of every route on the port (installed by web/server.py).

Gradio's `auth=` guards only Gradio's own routes; `AuthMiddleware` sits in front of all of them (the UI,
/gradio_api/..., POST / and /v1) and lets an anonymous request reach only what the login page needs.
Who may change things is `llama_space.service.permissions`; Hugging Face sign-in is `llama_space.web.oauth`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from llama_space.settings import Settings

log = logging.getLogger(__name__)

REALM = "Llama Space"
# What Gradio's login page needs before anyone has logged in (GET / shows the login form when auth is on).
PUBLIC_PATHS = {("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/logout"),
                ("GET", "/favicon.ico"), ("GET", "/theme.css"), ("GET", "/gradio_api/theme.css"),
                ("GET", "/manifest.json"), ("GET", "/robots.txt"), ("GET", "/pwa_icon"),
                # launch() itself calls it, without credentials, to run the startup events once
                ("GET", "/gradio_api/startup-events"),
                # Hugging Face OAuth (only routed when the UI holds a gr.LoginButton)
                ("GET", "/login/huggingface"), ("GET", "/login/callback")}
LOGIN_PATHS = ("/login", "/login/")
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")  # the frontend's own files
OPENAI_PREFIX = "/v1"


def _route_path(scope: Scope) -> str:
    """The path the router matches (root_path stripped), so the allow-list sees what routing sees."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


def _is_public(method: str, path: str) -> bool:
    method = "GET" if method == "HEAD" and path != "/" else method
    return (method, path) in PUBLIC_PATHS or (method == "GET" and path.startswith(PUBLIC_PREFIXES))


def _is_openai(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


class AuthMiddleware:
    """ASGI middleware: a request passes with Gradio's login cookie, HTTP Basic USER:PASS, or (/v1 only) the
    bearer API key; anonymous requests reach only the login page and static files and get 401 elsewhere.

    Basic credentials also open Gradio's own routes: the request is given a Gradio session cookie, so
    `curl -u USER:PASS .../gradio_api/call/generate` works like a logged-in browser; and a logged-in request
    to /v1 counts as holding the API key.
    """

    def __init__(self, app: ASGIApp, user: str, password: str, api_key: str = "") -> None:
        self.app = app
        self.user, self.password, self.api_key = user, password, api_key
        self._session_token = ""  # the Gradio token minted for Basic-authenticated requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path, headers = _route_path(scope), _headers(scope)
        method = scope.get("method", "GET")
        if self._has_api_key(path, headers):
            await self.app(scope, receive, send)
        elif self._has_session(scope, headers):
            await self.app(self._as_key_holder(scope, path), receive, send)
        elif self._basic_ok(headers):
            await self.app(self._as_key_holder(self._with_session(scope, headers), path), receive, send)
        elif scope["type"] == "http" and _is_public(method, path):
            await self.app(scope, receive, _lax_login_cookies(send) if path in LOGIN_PATHS else send)
        else:
            log.info("refused anonymous %s %s", method, path)
            await self._refuse(scope, send, path, "authorization" in headers)

    def _has_session(self, scope: Scope, headers: dict[str, str]) -> bool:
        """Whether the request carries a login cookie Gradio issued (as Gradio's own check reads it)."""
        gradio_app = scope.get("app")
        tokens, cookie_id = getattr(gradio_app, "tokens", None), getattr(gradio_app, "cookie_id", None)
        if not tokens or not cookie_id or "cookie" not in headers:
            return False
        cookies = SimpleCookie()
        try:
            cookies.load(headers["cookie"])
        except Exception:  # noqa: BLE001 - a malformed cookie header is simply no session
            return False
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            if name in cookies and cookies[name].value in tokens:
                return True
        return False

    def _has_api_key(self, path: str, headers: dict[str, str]) -> bool:
        if not self.api_key or not _is_openai(path):
            return False
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.api_key.encode())

    def _basic_ok(self, headers: dict[str, str]) -> bool:
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        # Both compared in full, in constant time, so timing tells nothing about which one was wrong.
        user_ok = secrets.compare_digest(user.encode(), self.user.encode())
        password_ok = secrets.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and user_ok and password_ok

    def _with_session(self, scope: Scope, headers: dict[str, str]) -> Scope:
        """`scope` plus a Gradio login cookie, so Gradio's own check accepts Basic credentials too."""
        gradio_app = scope.get("app")
        tokens, cookie_id = getattr(gradio_app, "tokens", None), getattr(gradio_app, "cookie_id", None)
        if tokens is None or not cookie_id:
            return scope
        if tokens.get(self._session_token) != self.user:  # first use, or logged out since
            self._session_token = secrets.token_urlsafe(16)
            tokens[self._session_token] = self.user
        cookie = f"access-token-unsecure-{cookie_id}={self._session_token}"
        if headers.get("cookie"):
            cookie = f"{headers['cookie']}; {cookie}"
        kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"cookie"]
        return {**scope, "headers": [*kept, (b"cookie", cookie.encode("latin-1"))]}

    def _as_key_holder(self, scope: Scope, path: str) -> Scope:
        """A logged-in request to /v1 counts as holding the API key (the /v1 routes check it themselves)."""
        if not self.api_key or not _is_openai(path):
            return scope
        kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
        return {**scope, "headers": [*kept, (b"authorization", f"Bearer {self.api_key}".encode("latin-1"))]}

    async def _refuse(self, scope: Scope, send: Send, path: str, tried: bool) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "authentication required"})
            return
        what = "Wrong credentials" if tried else "Authentication required"
        message = (f"{what}: log in on the page, or send HTTP Basic credentials (curl -u USER:PASS)"
                   + (", or the API key as 'Authorization: Bearer <key>'" if _is_openai(path) and self.api_key
                      else "") + ".")
        if _is_openai(path):
            body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                              "code": "invalid_api_key"}}
            challenge = "Bearer" if self.api_key else f'Basic realm="{REALM}"'
        else:
            body, challenge = {"error": message, "status": 401}, f'Basic realm="{REALM}"'
        # Gradio's browser client reads any 401 itself; a Basic challenge there would pop up a browser dialog.
        browser = path.startswith(("/gradio_api/", "/config"))
        headers = [(b"content-type", b"application/json")]
        if not browser:
            headers.append((b"www-authenticate", challenge.encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _lax_login_cookies(send: Send) -> Send:
    """`send` with Gradio's login cookies made SameSite=Lax: Gradio sets SameSite=None, which sends them along with
    requests that other sites' pages make. On a Space the app runs inside huggingface.co's iframe, where only a
    SameSite=None cookie keeps the login; there the request guard's Origin check stops other sites alone."""
    if os.environ.get("SPACE_ID"):
        return send

    async def lax(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [
                (key, _lax(value) if key.lower() == b"set-cookie" else value) for key, value in message["headers"]]}
        await send(message)
    return lax


def _lax(cookie: bytes) -> bytes:
    parts = [part for part in cookie.split(b";") if not part.strip().lower().startswith(b"samesite")]
    return b";".join([*parts, b" SameSite=lax"])


def middleware(settings: Settings) -> list:
    """The auth middleware for the app's FastAPI constructor (none without auth), so that it guards every
    route from the server's first request on."""
    from starlette.middleware import Middleware

    if not settings.auth_pair:
        return []
    user, password = settings.auth_pair
    return [Middleware(AuthMiddleware, user=user, password=password, api_key=settings.api_key)]
