"""How much memory and disk an export may use, read before it starts so it can be refused with the figures."""

from __future__ import annotations

import shutil
from pathlib import Path

from llama_space.errors import UserError

_CGROUP = Path("/sys/fs/cgroup")


def gib(size: int) -> str:
    """A byte count as people read it: '1.3 GB' (GiB, as memory and disk tools report them)."""
    return f"{size / 2**30:.1f} GB" if size >= 2**30 / 10 else f"{size / 2**20:.0f} MB"


def available_memory() -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, capped by a container's (cgroup v2)
    limit, as on a Space; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((_CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def free_disk(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def require_disk(path: Path, needed: int, what: str) -> None:
    """UserError saying how much is needed and free when `needed` bytes do not fit under `path`."""
    free = free_disk(path)
    if needed > free:
        raise UserError(f"{what} needs about {gib(needed)} of disk but only {gib(free)} is free there; "
                        "delete old exports or other files and try again.")


def require_memory(needed: int, what: str) -> None:
    """UserError saying how much is needed and available when `needed` bytes of memory are not available."""
    free = available_memory()
    if free is not None and needed > free:
        raise UserError(f"{what} needs about {gib(needed)} of memory but only {gib(free)} is available; stop other "
                        "work (a training job, the chat model on CPU) and try again.")
