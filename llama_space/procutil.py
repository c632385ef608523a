"""Process checks shared by the job registry and the janitor."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int, marker: str = "") -> bool:
    """Whether process `pid` runs and, given a `marker`, its command line contains it.

    The marker tells a recycled pid (some other command line) from the process we started. A zombie's
    command line is empty, so an exited but unreaped child counts as gone.
    """
    if Path("/proc/self").exists():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return bool(cmdline) and marker.encode() in cmdline
    try:  # no /proc (macOS): the pid check alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
