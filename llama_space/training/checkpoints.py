"""Atomic checkpoint directories: written under a temp name, renamed into place, only complete ones used.

A kill -9 at any moment leaves either the previous complete checkpoint or the new one, plus at worst a
`.tmp-*` directory that is ignored and later removed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

PREFIX = "checkpoint-"
KEEP = 2  # complete checkpoints kept; the older one is a fallback should the newest be unreadable
STATE_FILE = "trainer_state.json"  # Trainer writes it last into a checkpoint
_COMPLETE = re.compile(rf"^{PREFIX}(\d+)$")


def staging_dir(checkpoints_dir: Path, step: int) -> Path:
    """The temp dir the checkpoint of `step` is written into (the same path in every DDP rank)."""
    return Path(checkpoints_dir) / f".tmp-{PREFIX}{step}"


def make_empty(path: Path) -> None:
    """Create `path` as an empty directory, removing what a crashed earlier attempt left there."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _fsync_tree(path: Path) -> None:
    """Flush every file and directory under `path` so a rename publishes data that is on disk."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(written: Path, checkpoints_dir: Path, step: int) -> Path:
    """Move the fully written checkpoint dir `written` into place as checkpoint-<step>, then prune."""
    checkpoints_dir = Path(checkpoints_dir)
    target = checkpoints_dir / f"{PREFIX}{step}"
    _fsync_tree(written)
    if target.exists():  # same step saved again after a resume: move the old one aside first
        old = checkpoints_dir / f".tmp-old-{PREFIX}{step}"
        target.rename(old)
        written.rename(target)
        shutil.rmtree(old)
    else:
        written.rename(target)
    _fsync_dir(checkpoints_dir)
    prune(checkpoints_dir)
    return target


def complete(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _COMPLETE.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete(checkpoints_dir)
    return found[-1] if found else None


def step_of(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was written at."""
    return int(_COMPLETE.match(Path(checkpoint).name).group(1))


def prune(checkpoints_dir: Path, keep: int = KEEP) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and leftovers of interrupted writes."""
    root = Path(checkpoints_dir)
    for path in complete(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
