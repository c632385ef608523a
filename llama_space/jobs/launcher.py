"""The job launcher: runs a stored job in a process of its own session, or in a thread of the app, and watches it.

A process job survives the app (and the app a crash of the job): the launcher writes its pid, and a reaper
thread waits for it (no zombie) and records a death the process could not report itself. A thread job (training
on the served weights, an evaluation) borrows the app's model; it is gone when its thread ends or the app that ran
it exits. Either kind is cancelled through the cancel file it polls; `runs` tells whether a job still runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import llama_space
from llama_space.errors import UserError
from llama_space.jobs import files
from llama_space.jobs.processes import pid_alive, process_alive, process_start

if TYPE_CHECKING:
    from llama_space.jobs.store import JobStore

# Folders of the jobs running in threads of this process now, whichever launcher started them: a second app (or
# runner) in the same process must not take a running job for an interrupted one.
_IN_THREADS: set[Path] = set()
_IN_THREADS_LOCK = threading.Lock()
# Folders of the jobs whose process this process started and has not yet reaped: until its reaper has recorded
# how the process ended, the job counts as running (an exited, unreaped process looks gone, and a status read
# in that moment would take a job that failed with its exit code for an interrupted one).
_REAPING: set[tuple[Path, int]] = set()  # (job folder, pid)


def job_pid(job_dir: Path, status: dict) -> int | None:
    """The job's process id: the one the job reported, else the one the launcher started."""
    if status.get("pid"):
        return int(status["pid"])
    try:
        return int((Path(job_dir) / files.PID_FILE).read_text())
    except (OSError, ValueError):
        return None


def runs(job_dir: Path, status: dict, in_thread: bool) -> bool:
    """Whether the job in `job_dir` still runs: its process, or (`in_thread`) its thread in an app."""
    if in_thread:
        pid = status.get("pid")
        if pid in (None, os.getpid()):  # queued or running here: its thread says
            with _IN_THREADS_LOCK:
                return Path(job_dir).resolve() in _IN_THREADS
        # Another app process runs it: the app's command line has no job id, so its start time tells a recycled
        # pid (containers restart the app under the same few pids) from the app that took the job.
        return pid_alive(pid) and process_start(pid) == status.get("process_start")
    folder = Path(job_dir).resolve()
    with _IN_THREADS_LOCK:
        if any(reaped == folder for reaped, _ in _REAPING):
            return True
    pid = job_pid(job_dir, status)
    return pid is not None and process_alive(pid, job_dir)


def wait(read_status: Callable[[], dict], timeout: float | None = None, poll: float = 0.5) -> dict:
    """Poll `read_status` until the job no longer queues or runs (or `timeout` seconds pass); its last status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = read_status()
        if status["state"] not in files.ACTIVE_STATES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll)


class Launcher:
    """Starts the jobs of one store and records how their processes ended."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def start_process(self, job_id: str, command: list[str], what: str) -> int:
        """Run `command` (a Python module of this package and its arguments) for job `job_id` in a session of its
        own, its output appended to the job's log; returns its pid. UserError, recorded as the job's failure,
        when it cannot start."""
        store = self.store
        job_dir = store.job_dir(job_id)
        # Queued before the process exists, and without the pid of an earlier run, so nothing reads it as dead:
        # the reaper of a killed earlier run (of another app, after a restart) may wake only now, and must not
        # take this launch for its own process.
        (job_dir / files.PID_FILE).unlink(missing_ok=True)
        files.update_status(job_dir, state="queued", pid=None, error=None)
        package_root = str(Path(llama_space.__file__).parent.parent)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            with open(job_dir / store.kind.log_file, "ab") as log:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, env=env)
        except OSError as exc:
            message = f"Could not start the {what} process ({exc.strerror or type(exc).__name__})."
            store.mark_stopped(job_id, message)
            raise UserError(message) from exc
        (job_dir / files.PID_FILE).write_text(str(process.pid))
        with _IN_THREADS_LOCK:
            _REAPING.add((job_dir.resolve(), process.pid))
        threading.Thread(target=self._reap, args=(job_id, job_dir, process), daemon=True,
                         name=f"reap-{job_id}").start()
        return process.pid

    def _reap(self, job_id: str, job_dir: Path, process: subprocess.Popen) -> None:
        """Wait for the process (so it leaves no zombie) and record a death it could not report itself."""
        code = process.wait()
        with self.store.lock:
            try:
                self._record_end(job_id, job_dir, process, code)
            finally:
                with _IN_THREADS_LOCK:
                    _REAPING.discard((job_dir.resolve(), process.pid))

    def _record_end(self, job_id: str, job_dir: Path, process: subprocess.Popen, code: int) -> None:
        """Record how the reaped `process` ended, unless the job reported it or belongs to a newer launch."""
        try:
            status = files.read_status(job_dir)
        except files.DamagedJobFile:
            return  # nothing to add: the store reports such a job failed, saying why
        # A late reaper must leave a relaunched job alone: the status then belongs to a newer launch (whose pid
        # file is gone or names another process; {}: ask the pid file, not the status).
        if status.get("state") not in files.ACTIVE_STATES or job_pid(job_dir, {}) != process.pid:
            return
        # A launcher (`accelerate launch`) may start the processes that do the work in sessions of their own,
        # which outlive it: while the one that reported its pid lives, the job runs.
        reported = status.get("pid")
        if reported and reported != process.pid and process_alive(reported, job_dir):
            return
        # Killed by a signal: interrupted (a training job resumes from its last checkpoint).
        self.store.mark_stopped(job_id, None if code < 0 else self.store.died_message(job_dir, code))

    def start_thread(self, job_id: str, target: Callable[[], None], **status) -> threading.Thread:
        """Run `target` for job `job_id` in a thread of this process; `status` fields are recorded with it."""
        job_dir = self.store.job_dir(job_id)
        key = job_dir.resolve()
        with _IN_THREADS_LOCK:
            _IN_THREADS.add(key)  # before the status says queued: a reader sees it running
        files.update_status(job_dir, state="queued", pid=None, error=None, runs_in="thread",
                            process_start=process_start(os.getpid()), **status)

        def run() -> None:
            try:
                target()
            finally:
                with _IN_THREADS_LOCK:
                    _IN_THREADS.discard(key)

        thread = threading.Thread(target=run, daemon=True, name=f"job-{job_id}")
        thread.start()
        return thread

    def terminate(self, job_id: str, status: dict) -> None:
        """Send SIGTERM to the job's process, if it still runs (a job that cleans up on SIGTERM stops at once)."""
        job_dir = self.store.job_dir(job_id)
        pid = job_pid(job_dir, status)
        if pid is not None and process_alive(pid, job_dir):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def in_thread_here(job_dir: Path) -> bool:
    """Whether the job in `job_dir` runs in a thread of this process now."""
    with _IN_THREADS_LOCK:
        return Path(job_dir).resolve() in _IN_THREADS


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs `module` of this package with this interpreter."""
    return [sys.executable, "-m", module, *args]
