"""Who may change what the app holds or hand out its weights: train, cancel, resume, delete, download, push.

Allowed for everyone when the app is private (loopback) or password-protected, or when the operator opts in
(LLAMA_SPACE_ALLOW_PUBLIC_CHANGES). On a Hugging Face Space with OAuth on, the Space's owner (or a member of
the owning organization) may after signing in. Anyone else is refused with a message that says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from llama_space.settings import Settings


def oauth_enabled() -> bool:
    """Whether this runs on a Space with OAuth turned on (the Space then sets OAUTH_CLIENT_ID and SPACE_ID)."""
    return bool(os.environ.get("OAUTH_CLIENT_ID")) and bool(os.environ.get("SPACE_ID"))


def space_owner() -> str:
    """The user or organization owning this Space (Spaces set SPACE_AUTHOR_NAME)."""
    return os.environ.get("SPACE_AUTHOR_NAME", "")


def may_change(profile: dict | None, owner: str) -> bool:
    """Whether this HF profile may make changes: the Space's owner, or a member of the owning org."""
    if not profile or not owner:
        return False
    orgs = {org.get("preferred_username") or org.get("name") for org in profile.get("orgs") or []
            if isinstance(org, dict)}
    return profile.get("preferred_username") == owner or owner in orgs


class Permissions:
    """The rule above for one app; `current_profile()` is the signed-in HF profile of the request being served
    (the web layer supplies it; None when nobody is signed in)."""

    def __init__(self, settings: Settings, current_profile: Callable[[], dict | None] = lambda: None) -> None:
        self.settings = settings
        self.current_profile = current_profile

    @property
    def controls_on(self) -> bool:
        """Whether the UI offers the change controls (on an OAuth Space they stay on; each use checks the login)."""
        return self.settings.changes_allowed or oauth_enabled()

    @property
    def disabled_reason(self) -> str:
        """Why the controls are off (empty when they are on)."""
        return "" if self.controls_on else self.settings.changes_disabled_reason

    def require_job_access(self) -> None:
        """Raise UserError unless the current request may see training jobs: their ids, logs and held-out rows
        come from private training data, so they are shown only to those who may change jobs."""
        try:
            self.require_change()
        except UserError as exc:
            raise UserError(f"Training jobs (their ids, logs and held-out rows) are shown only to those who may "
                            f"train here. {exc}") from None

    def require_change(self) -> None:
        """Raise UserError unless the current request may make changes."""
        if self.settings.changes_allowed:
            return
        if not oauth_enabled():
            raise UserError(self.settings.changes_disabled_reason)
        profile, owner = self.current_profile(), space_owner()
        if profile is None:
            raise UserError("Sign in with Hugging Face (button at the top) to train, delete, download or push "
                            "adapters.")
        if not may_change(profile, owner):
            raise UserError(f"Only {owner or 'the Space owner'} may train, delete, download or push adapters on "
                            f"this Space; you are signed in as {profile.get('preferred_username')!r}. Duplicate "
                            "the Space to train your own.")
