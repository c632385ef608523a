"""Hugging Face OAuth on a Space with `hf_oauth: true`: the sign-in button and who is signed in on a request.

The rule of who may change things is service/permissions.py; this module only reads Gradio's session.
"""

from __future__ import annotations

import logging

from llama_space.service.permissions import oauth_enabled

log = logging.getLogger(__name__)


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


def oauth_user(request) -> dict | None:
    """The Hugging Face profile (OpenID userinfo) logged in on `request` (a gr.Request), or None."""
    from llama_space.compat import oauth_userinfo

    if request is None:
        return None
    return oauth_userinfo(request)


def current_profile() -> dict | None:
    """The HF profile signed in on the Gradio request being served now, or None."""
    from gradio.context import LocalContext

    return oauth_user(LocalContext.request.get(None))
