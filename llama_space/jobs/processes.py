"""Telling whether a job's process runs: by pid and command line, or by pid and start time."""

from __future__ import annotations

import os
import time
from pathlib import Path

EXEC_WAIT = 0.5  # seconds to wait for the command line of a process caught in the middle of exec


def pid_alive(pid: int, marker: str = "") -> bool:
    """Whether process `pid` runs and, given a `marker`, its command line contains it.

    The marker tells a recycled pid (some other command line) from the process we started. A zombie's
    command line is empty, so an exited but unreaped child counts as gone.
    """
    if not Path("/proc/self").exists():
        return _signal_alive(pid)  # no /proc (macOS): the pid check alone
    deadline = time.monotonic() + EXEC_WAIT
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if cmdline:
            return marker.encode() in cmdline
        # Empty: a zombie or a kernel thread, or a process just started (for ~10-25 ms after Popen returns, a
        # child in exec has its program but not yet its arguments).
        if not _has_program(pid) or time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def _has_program(pid: int) -> bool:
    try:
        os.readlink(f"/proc/{pid}/exe")  # gone for zombies and kernel threads
    except OSError:
        return False
    return True


def _signal_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(pid: int, job_dir: Path) -> bool:
    """Whether `pid` runs and is this job's process (a recycled pid belongs to some other command line)."""
    # The job dir's name (the job id) rather than its path: a shell user may pass a relative path.
    return pid_alive(pid, Path(job_dir).name)


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # the fields after the parenthesised command name
