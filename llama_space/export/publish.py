"""Pushing an adapter, a merged model or a GGUF file to a Hub model repo, with a generated model card, in one commit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export.card import KINDS, model_card

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, HfApi

CARD_FILE = "README.md"
NO_TOKEN = ("Pushing to the Hub needs a token with write access: create one at https://huggingface.co/settings/tokens "
            "and set HF_TOKEN before starting the app.")
_HTTP_REASONS = {401: "the token was refused; set HF_TOKEN to a valid token", 403:
                 "the token may not write there (it needs write access, and the namespace must be yours or your "
                 "organization's)", 404: "the Hub has no such namespace", 409: "the Hub reported a conflict; retry",
                 429: "the Hub is rate-limiting; retry in a while"}


def repo_files(kind: str, source: Path) -> list[tuple[str, Path]]:
    """(path in the repo, local file) for each file of `source` that is pushed, sorted; the card comes apart."""
    source = Path(source)
    if kind == "adapter":
        wanted = [source / adapters.CONFIG_FILE, source / adapters.WEIGHTS_FILE, source / adapters.METADATA_FILE]
    elif kind == "merged":
        wanted = [path for path in source.iterdir() if path.is_file() and path.name != CARD_FILE]
    elif kind == "gguf":
        wanted = [*source.glob("*.gguf"), source / "Modelfile"]
    else:
        raise UserError(f"Unknown kind {kind!r}; push an adapter, a merged model or a GGUF export.")
    files = sorted((path.name, path) for path in wanted if path.is_file())
    if not files:
        raise UserError(f"There is nothing to push in this {kind} (its files are gone); export it again.")
    return files


def commit_operations(files: list[tuple[str, Path]], card: str) -> list[CommitOperationAdd]:
    """The one commit's operations: every file, then README.md (the model card)."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
    return operations + [CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode())]


def hub_api(token: str | None = None) -> HfApi:
    """An HfApi with the token given or HF_TOKEN; UserError without one, or when the Hub is switched off."""
    token = token or os.environ.get("HF_TOKEN") or None
    if not token:
        raise UserError(NO_TOKEN)
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise UserError("The Hub is switched off here (HF_HUB_OFFLINE=1); unset it to push, or download the "
                        "files instead.")
    return HfApi(token=token)


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it names a model repo as user/name (or org/name)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"{repo_id!r} is not a Hub repository id; write it as your-name/model-name.") from exc
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UserError(f"{repo_id!r} is not a Hub repository id; write it as your-name/model-name.")
    return repo_id


def push(kind: str, source: Path, name: str, metadata: dict, repo_id: str, private: bool = True,
         qtype: str = "", api: HfApi | None = None, token: str | None = None) -> str:
    """Create `repo_id` (private by default; kept if it exists) and commit the files with the card; return its URL."""
    if kind not in KINDS:
        raise UserError(f"Unknown kind {kind!r}; push an adapter, a merged model or a GGUF export.")
    check_repo_id(repo_id)
    files = repo_files(kind, source)
    gguf_file = next((file for file, _ in files if file.endswith(".gguf")), "")
    card = model_card(kind, name, metadata, repo_id, qtype=qtype, gguf_file=gguf_file)
    api = api or hub_api(token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo_id, commit_operations(files, card), repo_type="model",
                          commit_message=f"Upload {kind} {name} from Llama Space")
    except Exception as exc:  # HTTP, network and auth failures all become one message saying why
        raise UserError(f"Could not push {name!r} to {repo_id!r}: {_reason(exc)}.") from exc
    return str(url)


def push_adapter(adapters_dir: Path, name: str, repo_id: str, token: str | None = None, private: bool = True,
                 api: HfApi | None = None) -> str:
    """Upload adapter `name` with a generated model card to the Hub model repo `repo_id` (created private by
    default); return the repo URL. `api` stands in for huggingface_hub.HfApi (tests record what would be sent)."""
    adapters.own_files(adapters_dir, name)  # the same rule as the zip: nothing behind a link leaves the server
    path = adapters.adapter_path(adapters_dir, name)
    return push("adapter", path, name, adapters.read_metadata(path), repo_id, private=private, api=api, token=token)


def _reason(exc: Exception) -> str:
    """Why a push failed, without the exception's own text (which may carry local paths)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        code = exc.response.status_code
        return _HTTP_REASONS.get(code, f"the Hub answered HTTP {code}")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (check the network connection)"
    return f"{type(exc).__name__} (check the network connection and the repository id)"
