"""Which checkpoint an adapter merges into: the app's base model, as a local folder of safetensors."""

from __future__ import annotations

import os
from pathlib import Path

from llama_space.errors import UserError
from llama_space.inference.loading import base_model_name, resolve_model, same_base

# What a merge reads from a Hub snapshot: weights, configs, tokenizer and chat template.
SNAPSHOT_FILES = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "*.model", "*.txt"]


def base_dir(model: str, cache_dir: Path, download: bool = False) -> Path:
    """The local folder of the `model` setting's checkpoint ("" = the embedded model's converted copy).

    A Hub id is looked up in the Hugging Face cache (where loading it for chat put it); `download` fetches what
    is missing (only an export job does, never a request).
    """
    source = resolve_model(model, Path(cache_dir))
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=SNAPSHOT_FILES, local_files_only=not download,
                                      token=os.environ.get("HF_TOKEN") or None))
    except LocalEntryNotFoundError as exc:
        raise UserError(f"The base model {source!r} is not downloaded on this machine; load it once for chat "
                        f"(or run `hf download {source}`) and export again.") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"Could not download the base model {source!r} ({type(exc).__name__}); check the "
                        "network and HF_TOKEN.") from exc


def check_same_base(metadata: dict, model: str, adapter: str) -> None:
    """Refuse an adapter trained on another base than the one the app runs (it would merge into the wrong one)."""
    trained_on, serving = metadata.get("base_model") or "", base_model_name(model)
    if trained_on and not same_base(trained_on, serving):
        raise UserError(f"Adapter {adapter!r} was trained on {trained_on}, but the app runs {serving}: start the "
                        f"app with --model {trained_on} to merge it.")
