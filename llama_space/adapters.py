"""The adapters directory: names, what a complete adapter holds, and its metadata."""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
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


def staging_path(adapters_dir: Path, name: str) -> Path:
    """A hidden temp dir inside `adapters_dir` to write adapter `name` into before publishing it."""
    path = Path(adapters_dir) / f".tmp-{validate_name(name)}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_metadata(path: Path, metadata: dict) -> None:
    """Write our metadata file into adapter dir `path`."""
    (Path(path) / METADATA_FILE).write_text(json.dumps(metadata, indent=1, sort_keys=True))


def publish(staging: Path, adapters_dir: Path, name: str) -> Path:
    """Rename the fully written `staging` dir to adapters/<name> in one step; refuse to replace an adapter."""
    target = adapter_path(adapters_dir, name)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (Path(staging) / f).is_file()]
    if missing:
        raise UserError(f"adapter {name!r} was not saved completely (missing {', '.join(missing)})")
    if target.exists():
        raise UserError(exists_message(name))
    try:
        Path(staging).rename(target)  # also fails, rather than replaces, if a non-empty dir appeared meanwhile
    except OSError as exc:
        raise UserError(exists_message(name)) from exc
    return target


def exists_message(name: str) -> str:
    """The error for a name that is already taken."""
    return f"Adapter {name!r} exists; choose another name or delete it."


def _existing(adapters_dir: Path, name: str) -> Path:
    path = adapter_path(adapters_dir, name)
    if not is_complete(path):
        raise UserError(f"There is no adapter named {name!r}.")
    return path


def describe(adapters_dir: Path) -> list[dict]:
    """One dict per complete adapter, sorted by name: {"name", **metadata} for UI tables."""
    return [{**read_metadata(Path(adapters_dir) / name), "name": name} for name in list_names(adapters_dir)]


def own_folder(adapters_dir: Path, name: str) -> Path:
    """The folder of adapter `name` if it is a folder of the adapters dir itself, not a link to one elsewhere:
    deleting, zipping or pushing through a link would act on whatever the link points at."""
    path = _existing(adapters_dir, name)
    if path.is_symlink():
        raise UserError(f"Adapter {name!r} is a link to a folder elsewhere on the server, which the app neither "
                        f"deletes, zips nor pushes: remove the link adapters/{name} on the server (the folder it "
                        "points at stays), or replace it with a copy of that folder.")
    return path


def own_files(adapters_dir: Path, name: str) -> list[Path]:
    """The files of adapter `name`, sorted; UserError if any is a link (it may point at any file of the server)."""
    path = own_folder(adapters_dir, name)
    entries = sorted(path.iterdir())
    links = [entry.name for entry in entries if entry.is_symlink()]
    if links:
        raise UserError(f"Adapter {name!r} holds links ({', '.join(links)}), which downloads and pushes never "
                        f"follow: replace them in adapters/{name} with the files themselves.")
    return [entry for entry in entries if entry.is_file()]


def delete(adapters_dir: Path, name: str) -> None:
    """Remove adapter `name`; it vanishes from listings at once (renamed away, then deleted; links inside are
    removed, never followed)."""
    path = own_folder(adapters_dir, name)
    doomed = path.with_name(f".deleting-{name}-{os.getpid()}")
    path.rename(doomed)
    shutil.rmtree(doomed)


def zip_adapter(adapters_dir: Path, name: str, out_dir: Path) -> Path:
    """Write out_dir/<name>.zip holding the folder <name>/ with the adapter's files; return its path."""
    files = own_files(adapters_dir, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.zip"
    tmp = out_dir / f".{name}.zip.tmp-{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, f"{name}/{file.name}")
    os.replace(tmp, target)
    return target



def lineage_of(adapters_dir: Path, parent: str, base_model: str) -> list[dict]:
    """The ancestry of an adapter trained on from `parent`, oldest first: the parent's own lineage, then the parent
    ({"adapter", "method", "dataset_fingerprint", "dataset_name"}); UserError when there is no such adapter or it
    was trained on another base model."""
    path = _existing(adapters_dir, parent)
    meta = read_metadata(path)
    if meta.get("base_model") and base_model and meta["base_model"] != base_model:
        raise UserError(f"Adapter {parent!r} was trained on {meta['base_model']}, not on {base_model}: a job can only "
                        "continue an adapter of the model this app serves.")
    own = {"adapter": parent, "method": meta.get("method") or "sft",
           "dataset_fingerprint": meta.get("dataset_fingerprint", ""), "dataset_name": meta.get("dataset_name", "")}
    earlier = meta.get("lineage") if isinstance(meta.get("lineage"), list) else []
    return [*earlier, own]


def trained_system_prompt(adapters_dir: Path, name: str) -> str:
    """The system prompt adapter `name` was trained with ("" for the base, an unknown adapter or none)."""
    if name in BASE_NAMES or not isinstance(name, str) or not _NAME.fullmatch(name):
        return ""
    prompt = read_metadata(Path(adapters_dir) / name).get("system_prompt")
    return prompt if isinstance(prompt, str) else ""


def with_trained_prompt(messages: list[dict] | str, adapters_dir: Path, name: str) -> list[dict] | str:
    """`messages` with adapter `name`'s trained system prompt first when the caller gave none (a raw prompt string
    and a conversation with its own system message are left as they are)."""
    if isinstance(messages, str) or (messages and messages[0].get("role") == "system"):
        return messages
    prompt = trained_system_prompt(adapters_dir, name)
    return [{"role": "system", "content": prompt}, *messages] if prompt else messages
