"""ModelScope (modelscope.cn) as a source of base models and training data, named `modelscope:<owner>/<name>`.

Repositories are fetched with ModelScope's own client, `modelscope_hub` (the package `modelscope.snapshot_download`
hands every download to since modelscope 1.38; unlike `modelscope` it imports no torch), into the app's cache,
`<cache dir>/modelscope`, laid out as ModelScope lays out its cache: `models/<owner>--<name>/snapshots/master/`
and `datasets/<owner>--<name>/snapshots/<revision>/`. A copy found there is used without the network, which is
how an offline machine gets one: copy the folder in. The client itself reads MODELSCOPE_API_TOKEN (gated and
private repositories) and MODELSCOPE_ENDPOINT (another site, such as https://www.modelscope.ai).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from llama_space.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "modelscope:"
CACHE_SUBDIR = "modelscope"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
TOKEN_HINT = "set MODELSCOPE_API_TOKEN on the server to an access token of an account that may read it"


def is_modelscope(name: str) -> bool:
    """Whether a model or dataset setting names a ModelScope repository."""
    return (name or "").startswith(PREFIX)


def repo_id(name: str, what: str) -> str:
    """The `owner/name` of `modelscope:owner/name` (`what`: "model" or "dataset"); UserError for anything else."""
    repo = name.removeprefix(PREFIX).strip()
    if not _REPO_ID.match(repo) or ".." in repo:
        raise UserError(f"A ModelScope {what} is named modelscope:<owner>/<name>, e.g. "
                        f"modelscope:LLM-Research/Meta-Llama-3.1-8B-Instruct; got {name!r}")
    return repo


def cache_root(cache_dir: Path) -> Path:
    """Where ModelScope repositories are kept inside the app's cache."""
    return Path(cache_dir) / CACHE_SUBDIR


def cached(repo: str, kind: str, cache_dir: Path, revision: str = "") -> Path | None:
    """The snapshot folder of `repo` (kind "model" or "dataset") in the app's cache, or None; never the network."""
    from modelscope_hub import CacheNotFound, HubApi

    try:
        return Path(HubApi().download_repo(repo, kind, revision=revision or None, cache_dir=cache_root(cache_dir),
                                           local_files_only=True))
    except CacheNotFound:
        return None


# Picks the files to fetch from a listing of (path, size) and may refuse them (raising UserError).
Select = Callable[[list[tuple[str, int]]], list[str]]


def download(repo: str, kind: str, cache_dir: Path, *, revision: str = "", allow_patterns: list[str] | None = None,
             select: Select | None = None) -> Path:
    """Fetch `repo`'s files matching the patterns into the app's cache; returns the snapshot folder.

    With `select`, the repository is listed first and only the files it picks are fetched (a size check sees the
    listing before anything is downloaded). Every failure becomes a UserError that says what to do.
    """
    from modelscope_hub import HubApi

    api = HubApi()
    try:
        files = None
        if select is not None:
            listing = [info for info in api.list_repo_files(repo, kind, revision=revision or None) if not info.is_dir]
            picked = set(select([(info.path, info.size) for info in listing]))
            files = [{"Path": info.path, "Size": info.size, "Sha256": info.sha256} for info in listing
                     if info.path in picked]
        return Path(api.download_repo(repo, kind, revision=revision or None, cache_dir=cache_root(cache_dir),
                                      allow_patterns=allow_patterns, file_list=files))
    except UserError:
        raise
    except Exception as exc:  # every client failure becomes a message that says what to fix
        log.info("could not download %s %s from ModelScope: %r", kind, repo, exc)
        raise UserError(_failure(exc, kind, repo)) from exc


def _failure(exc: BaseException, kind: str, repo: str) -> str:
    """What to tell the user when the ModelScope client failed to fetch `repo` (kind "model" or "dataset")."""
    from modelscope_hub import errors

    what = f"{kind} {PREFIX}{repo}"
    if isinstance(exc, errors.FileDownloadError) and exc.failed_files:
        exc = next(iter(exc.failed_files.values()))  # the first file's reason (as a rule they all share it)
    if isinstance(exc, (errors.AuthenticationError, errors.PermissionDeniedError)):
        return (f"ModelScope refused access to the {what} (it is gated or private, or the token is wrong): accept "
                f"its licence on its modelscope.cn page, then {TOKEN_HINT}.")
    if isinstance(exc, errors.NotExistError):
        return (f"The {what} was not found on ModelScope; check the owner and name (if it is private, "
                f"{TOKEN_HINT}).")
    if isinstance(exc, (ConnectionError, TimeoutError)) or _requests_network_error(exc):
        layout = f"<data dir>/cache/{CACHE_SUBDIR}/{kind}s/{repo.replace('/', '--')}/snapshots/master"
        return (f"The {what} is not in the app's cache and ModelScope is not reachable from this server "
                f"(offline): connect it, or copy the repository's files into {layout}.")
    if isinstance(exc, (errors.RateLimitError, errors.QuotaExceededError, errors.ServerError)):
        return f"ModelScope could not serve the {what} right now ({type(exc).__name__}); try again later."
    return f"The {what} could not be downloaded from ModelScope ({type(exc).__name__}); try again."


def _requests_network_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))
