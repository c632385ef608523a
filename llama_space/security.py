"""Safe sharing: one login in front of every route on the port, Hugging Face OAuth for changes, scratch clean-up.

Gradio's `auth=` guards only Gradio's own routes; `AuthMiddleware` sits in front of all of them (the UI,
/gradio_api/..., POST / and /v1) and lets an anonymous request reach only what the login page needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.errors import UserError

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
            await self.app(scope, receive, send)
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
        browser = path.startswith("/gradio_api/") or path.startswith("/config")
        headers = [(b"content-type", b"application/json")]
        if not browser:
            headers.append((b"www-authenticate", challenge.encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


# ---- Hugging Face OAuth (a Space with `hf_oauth: true`) ---------------------------------------------------
def oauth_enabled() -> bool:
    """Whether this runs on a Space with OAuth turned on (the Space then sets OAUTH_CLIENT_ID and SPACE_ID)."""
    return bool(os.environ.get("OAUTH_CLIENT_ID")) and bool(os.environ.get("SPACE_ID"))


def login_button():
    """A "Sign in with Hugging Face" button inside the current Blocks on an OAuth Space; None elsewhere."""
    if not oauth_enabled():
        return None
    import importlib.util

    if importlib.util.find_spec("authlib") is None or importlib.util.find_spec("itsdangerous") is None:
        log.error("This Space has OAuth on, but gradio[oauth] is not installed: nobody can sign in, so "
                  "training, deleting and pushing stay off. Add gradio[oauth] to requirements.txt.")
        return None
    import gradio as gr

    return gr.LoginButton()


def space_owner() -> str:
    """The user or organization owning this Space (Spaces set SPACE_AUTHOR_NAME)."""
    return os.environ.get("SPACE_AUTHOR_NAME", "")


def oauth_user(request) -> dict | None:
    """The Hugging Face profile (OpenID userinfo) logged in on `request` (a gr.Request), or None."""
    from gradio import helpers, oauth

    if request is None:
        return None
    try:
        info = oauth._get_valid_oauth_info_from_session(helpers._session_from_request(request))
    except Exception:  # noqa: BLE001 - no session middleware or a garbled session: not logged in
        return None
    return (info or {}).get("userinfo") or None


def may_change(profile: dict | None, owner: str) -> bool:
    """Whether this HF profile may train, delete or push: the Space's owner, or a member of the owning org."""
    if not profile or not owner:
        return False
    orgs = {org.get("preferred_username") or org.get("name") for org in profile.get("orgs") or []
            if isinstance(org, dict)}
    return profile.get("preferred_username") == owner or owner in orgs


def check_oauth_change() -> None:
    """On an OAuth Space, refuse a change unless the current Gradio request is logged in as the owner."""
    if not oauth_enabled():
        return
    from gradio.context import LocalContext

    profile = oauth_user(LocalContext.request.get(None))
    owner = space_owner()
    if profile is None:
        raise UserError("Sign in with Hugging Face (button at the top) to train, delete or push adapters.")
    if not may_change(profile, owner):
        raise UserError(f"Only {owner or 'the Space owner'} may train, delete or push adapters on this Space; "
                        f"you are signed in as {profile.get('preferred_username')!r}. Duplicate the Space "
                        "to train your own.")


# ---- scratch clean-up -------------------------------------------------------------------------------------
_STALE_ADAPTER_DIR = re.compile(r"^\.(?:tmp|deleting)-.+-(\d+)$")  # adapters.staging_path / adapters.delete
FINISHED_STATES = ("completed", "cancelled", "failed")


def _pid_alive(pid: int) -> bool:
    if Path("/proc/self").exists():
        try:
            return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie's is empty: it is gone
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> bool:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except FileNotFoundError:
        return False
    return True


class Janitor:
    """Removes what finished work leaves behind: training scratch, dead staging dirs, old uploads and zips."""

    def __init__(self, settings: Settings, upload_dir: str | Path | None = None,
                 upload_max_age: float = 24 * 3600, zip_max_age: float = 3600) -> None:
        self.jobs_dir = Path(settings.data_dir).resolve() / "jobs"
        self.adapters_dir = Path(settings.adapters_dir)
        self.upload_dir = Path(upload_dir) if upload_dir else None
        self.upload_max_age, self.zip_max_age = upload_max_age, zip_max_age

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many things of each kind it removed."""
        return {"job_scratch": self._job_scratch(), "staging": self._stale_staging(),
                "uploads": self._old_entries(self.upload_dir, "*", self.upload_max_age),
                "zips": self._old_entries(Path(tempfile.gettempdir()), "llama-space-zip-*", self.zip_max_age)}

    def _job_scratch(self) -> int:
        """A finished job keeps its status, metrics and log; its checkpoints and dataset copy go."""
        from llama_space.training import jobfiles

        removed = 0
        if not self.jobs_dir.is_dir():
            return 0
        for job_dir in self.jobs_dir.iterdir():
            status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE) if job_dir.is_dir() else {}
            if status.get("state") not in FINISHED_STATES:
                continue
            dataset = str(jobfiles.read_json(job_dir / jobfiles.JOB_FILE).get("dataset", ""))
            scratch = [job_dir / jobfiles.CHECKPOINTS_DIR]
            if re.fullmatch(r"dataset\.[a-z]{1,8}", dataset):  # only the copy the registry made, never a path
                scratch.append(job_dir / dataset)
            removed += sum(_remove(path) for path in scratch if path.exists())
        return removed

    def _stale_staging(self) -> int:
        """Half-written (.tmp-NAME-PID) or half-deleted (.deleting-NAME-PID) adapter dirs of dead processes."""
        if not self.adapters_dir.is_dir():
            return 0
        stale = [path for path in self.adapters_dir.iterdir()
                 if (m := _STALE_ADAPTER_DIR.match(path.name)) and not _pid_alive(int(m.group(1)))]
        return sum(_remove(path) for path in stale)

    @staticmethod
    def _old_entries(root: Path | None, pattern: str, max_age: float) -> int:
        if root is None or not root.is_dir():
            return 0
        cutoff = time.time() - max_age
        old = [path for path in root.glob(pattern) if path.lstat().st_mtime < cutoff]
        return sum(_remove(path) for path in old)


def janitor_lifespan(settings: Settings, interval: float = 3600):
    """A FastAPI lifespan that sweeps at start-up and then every `interval` seconds while serving."""

    @asynccontextmanager
    async def lifespan(app):
        janitor = Janitor(settings, getattr(app, "uploaded_file_dir", None))

        async def loop() -> None:
            while True:
                try:
                    removed = await asyncio.to_thread(janitor.sweep)
                    if any(removed.values()):
                        log.info("cleaned up %s", removed)
                except Exception:  # noqa: BLE001 - a failed sweep must not stop serving; the next one retries
                    log.exception("clean-up failed")
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()

    return lifespan


def app_kwargs(settings: Settings) -> dict:
    """Keyword arguments for the FastAPI app `demo.launch` creates: the auth middleware (when auth is set),
    installed before the server accepts its first request, and the clean-up lifespan."""
    from starlette.middleware import Middleware

    kwargs: dict = {"lifespan": janitor_lifespan(settings)}
    if settings.auth_pair:
        user, password = settings.auth_pair
        kwargs["middleware"] = [Middleware(AuthMiddleware, user=user, password=password,
                                           api_key=settings.api_key)]
    return kwargs
