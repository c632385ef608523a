"""The base model's GGUF, written once per base and quantization and shared by every adapter GGUF export.

It lives in the app's cache, `cache/gguf/<base>-<fingerprint>/<base>-<qtype>.gguf`. The fingerprint names the
checkpoint's files (their resolved names, which in a Hub cache are the blobs' content hashes, sizes and
modification times) and its config, so a changed or re-downloaded base gets a new file instead of a stale one.
The file is written under a temporary name and renamed when whole (gguf.write_gguf), so a cancelled or failed
export never leaves a half file where the next export would take it. An export folder gets a hard link to it
(a copy where the cache lies on another file system): its downloads and Modelfile need no file outside it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from llama_space.model.source import base_model_name

CACHE_FOLDER = "gguf"


def base_name(model: str) -> str:
    """The file-name stem of the `model` setting's base: the last part of its id or path, e.g. Llama-3.1-8B-Instruct."""
    last = base_model_name(model).rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.") or "base"


def fingerprint(base_dir: Path) -> str:
    """12 hex digits that change when the checkpoint in `base_dir` changes (see the module's docstring)."""
    digest = hashlib.sha256((Path(base_dir) / "config.json").read_bytes())
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        stat = file.stat()  # follows a Hub cache's link to its blob
        digest.update(f"{file.name}\0{file.resolve().name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def cached_path(cache_dir: Path, model: str, base_dir: Path, qtype: str) -> Path:
    """Where the base's `qtype` GGUF lies in the cache (whether or not it was written yet)."""
    name = base_name(model)
    return Path(cache_dir) / CACHE_FOLDER / f"{name}-{fingerprint(base_dir)}" / f"{name}-{qtype}.gguf"


def base_gguf(cache_dir: Path, model: str, base_dir: Path, qtype: str,
              progress: Callable[[float], None] | None = None) -> tuple[Path, bool]:
    """(the base's `qtype` GGUF in the cache, whether it was written now): written only when not cached yet."""
    from llama_space.export.gguf import write_gguf

    target = cached_path(cache_dir, model, base_dir, qtype)
    if target.is_file():
        return target, False
    return write_gguf(base_dir, target, qtype, progress=progress), True


def link_into(cached: Path, out_dir: Path) -> Path:
    """The cached file in `out_dir` under its own name: a hard link, or a copy across file systems."""
    target = Path(out_dir) / Path(cached).name
    target.unlink(missing_ok=True)
    try:
        os.link(cached, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(cached, target)
    return target
