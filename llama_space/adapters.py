"""The adapters directory: names, what a complete adapter holds, and its metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llama_space.errors import UserError

BASE_NAMES = ("", "base")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_FILE = "llama_space.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    """Return `name` if it is a safe adapter name, else raise UserError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.lower() == "base":
        raise UserError(
            f"Invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no path separators, not 'base')")
    return name


def adapter_path(adapters_dir: Path, name: str) -> Path:
    """The directory of adapter `name` (validated; never outside `adapters_dir`)."""
    return Path(adapters_dir) / validate_name(name)


def is_complete(path: Path) -> bool:
    """A usable adapter has its PEFT config and safetensors weights (pickle-only weights are never loaded)."""
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def list_names(adapters_dir: Path) -> list[str]:
    """Names of the complete adapters on disk, sorted."""
    root = Path(adapters_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and _NAME.fullmatch(p.name) and is_complete(p))


def read_metadata(path: Path) -> dict:
    """Our metadata for an adapter merged over its PEFT config's base model; {} fields when absent."""
    meta: dict = {}
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        meta["base_model"] = config.get("base_model_name_or_path") or ""
        meta["r"] = config.get("r")
    except (OSError, ValueError):
        pass
    try:
        meta.update(json.loads((path / METADATA_FILE).read_text()))
    except (OSError, ValueError):
        pass
    return meta
