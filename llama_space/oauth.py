"""Hugging Face OAuth on a Space with `hf_oauth: true`: only the Space's owner may train, delete or push."""

from __future__ import annotations

import logging
import os

from llama_space.errors import UserError

log = logging.getLogger(__name__)


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
    from gradio import helpers
    from gradio import oauth as gradio_oauth

    if request is None:
        return None
    try:
        info = gradio_oauth._get_valid_oauth_info_from_session(helpers._session_from_request(request))
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
