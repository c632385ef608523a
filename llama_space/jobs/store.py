"""The job store: one folder per job under data_dir/<kind folder>/, read back as the source of truth.

A job's folder is written under a hidden staging name and renamed into place whole, so a listing never shows a
half-made job. Reading a status reconciles it with what runs: a job whose process (or thread) is gone while its
status still says queued or running is marked cancelled (if a cancel was asked), failed or interrupted. A job
whose job.json or status.json cannot be read is reported failed, that job alone; its files stay for a person.
Each kind of job (training, export, evaluation) is a JobKind and may subclass JobStore for what it adds.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llama_space.errors import UserError
from llama_space.jobs import files, launcher
from llama_space.jobs.processes import pid_alive

STAGING_PREFIX = ".new-"  # a job folder being prepared: .new-<job_id>-<pid of the preparing process>
_STAGING = re.compile(rf"^{re.escape(STAGING_PREFIX)}.+-(\d+)$")


@dataclass(frozen=True)
class JobKind:
    """What tells one kind of job from another on disk and in messages."""

    noun: str  # "training job", "export", "evaluation": in messages ("There is no export ...")
    folder: str  # the folder under data_dir that holds this kind's jobs
    log_file: str  # the job's stdout and stderr, in its folder
    id_key: str = "job_id"  # the status field that names the job
    id_hex: int = 6  # random hex digits in an id (longer where results are served from the folder)

    def id_pattern(self) -> re.Pattern:
        return re.compile(rf"^\d{{8}}-\d{{6}}-[0-9a-f]{{{self.id_hex}}}$")


class JobStore:
    """Creates job folders and reads their status, reconciled with the processes and threads that run them."""

    def __init__(self, data_dir: str | Path, kind: JobKind) -> None:
        self.kind = kind
        self.root = Path(data_dir).resolve() / kind.folder
        self._id = kind.id_pattern()
        # Serialises launches and reaps with the status reads that could mark a job dead meanwhile.
        self.lock = threading.RLock()

    # ---- ids and folders
    def new_id(self) -> str:
        """A fresh id: the time (so ids sort by creation) and a random part."""
        return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(self.kind.id_hex // 2)

    def is_id(self, text: str) -> bool:
        """Whether `text` has the form of this kind's ids."""
        return isinstance(text, str) and bool(self._id.match(text))

    def staging(self, job_id: str) -> Path:
        """Where job `job_id` is prepared: hidden and not an id, so never listed; the pid lets the janitor sweep
        one whose process died."""
        return self.root / f"{STAGING_PREFIX}{job_id}-{os.getpid()}"

    def write_job(self, job_id: str, config: dict, status: dict, *, commit: bool = True) -> Path:
        """Write job.json and status.json into the job's staging folder (made here unless the kind has put files
        there first) and, with `commit`, put it in place; returns the staging folder. UserError, with nothing
        left behind, when the disk refuses."""
        staging = self.staging(job_id)
        try:
            staging.mkdir(parents=True, exist_ok=True)
            files.write_json_atomic(staging / files.JOB_FILE, config)
            files.update_status(staging, **{self.kind.id_key: job_id}, state="queued", created=time.time(),
                                started=None, finished=None, error=None, pid=None, **status)
            if commit:
                self.commit(job_id)
        except OSError as exc:  # disk full, quota, permissions
            self.discard(job_id)
            raise UserError(f"Could not write the {self.kind.noun}'s files "
                            f"({exc.strerror or 'input/output error'}); no {self.kind.noun} was created.") from exc
        return staging

    def commit(self, job_id: str) -> None:
        """Put a prepared job in place, where listings find it."""
        os.rename(self.staging(job_id), self.root / job_id)

    def discard(self, job_id: str) -> None:
        """Remove a prepared job that was not committed (a no-op once it was)."""
        shutil.rmtree(self.staging(job_id), ignore_errors=True)

    def job_dir(self, job_id: str) -> Path:
        """The folder of job `job_id`; UserError for a malformed or unknown id."""
        path = self.root / job_id if self.is_id(job_id) else None
        if path is None or not (path / files.JOB_FILE).is_file():
            raise UserError(f"There is no {self.kind.noun} {job_id!r}.")
        return path

    def ids(self) -> list[str]:
        """Every job's id (in no particular order)."""
        if not self.root.is_dir():
            return []
        return [path.name for path in self.root.iterdir()
                if self._id.match(path.name) and (path / files.JOB_FILE).is_file()]

    # ---- reading
    def config(self, job_id: str) -> dict:
        """The job's job.json, as written when it was created."""
        return files.read_json(self.job_dir(job_id) / files.JOB_FILE)

    def status(self, job_id: str) -> dict:
        """status.json plus the derived fields, after marking a job that no longer runs (or whose files are
        damaged)."""
        job_dir = self.job_dir(job_id)
        with self.lock:
            try:
                files.read_json(job_dir / files.JOB_FILE)
                status = files.read_status(job_dir)
            except files.DamagedJobFile as exc:
                return self.derived(job_dir, self._damaged(job_dir, exc))
            if status.get("state", "queued") in files.ACTIVE_STATES and not self.runs(job_dir, status):
                status = self.mark_stopped(job_id)
        return self.derived(job_dir, status)

    def runs(self, job_dir: Path, status: dict) -> bool:
        """Whether the job's process (or thread) still runs it."""
        return launcher.runs(job_dir, status, self.in_thread(status))

    def in_thread(self, status: dict) -> bool:
        """Whether the job runs in a thread of an app rather than in a process of its own."""
        return status.get("runs_in") == "thread"

    def derived(self, job_dir: Path, status: dict) -> dict:
        """The status as reported: its id and how long it has run; a kind adds its own fields."""
        started, end = status.get("started"), status.get("finished") or time.time()
        return {**status, self.kind.id_key: job_dir.name,
                "elapsed_seconds": round(end - started, 1) if started else None}

    def _damaged(self, job_dir: Path, exc: files.DamagedJobFile) -> dict:
        """A damaged job's status: failed, with what is still readable."""
        readable = {}
        for name in (files.JOB_FILE, files.STATUS_FILE):
            with contextlib.suppress(files.DamagedJobFile):
                readable[name] = files.read_json(job_dir / name)
        status = readable.get(files.STATUS_FILE) or {
            key: readable.get(files.JOB_FILE, {}).get(key) for key in self.damaged_keys()}
        created = time.mktime(time.strptime(job_dir.name[:15], "%Y%m%d-%H%M%S"))  # the id starts with it
        return {"created": created, **status, "state": "failed", "error": str(exc), "eta_seconds": None}

    def damaged_keys(self) -> tuple[str, ...]:
        """The job.json fields a damaged job's status shows when its status.json is unreadable."""
        return ()

    def list_jobs(self) -> list[dict]:
        """Every job's status, newest first."""
        found = [self.status(job_id) for job_id in self.ids()]
        return sorted(found, key=lambda s: (s.get("created") or 0, s[self.kind.id_key]), reverse=True)

    def active(self) -> dict | None:
        """The queued or running job, if any."""
        return next((s for s in self.list_jobs() if s.get("state") in files.ACTIVE_STATES), None)

    # ---- ending
    def mark_stopped(self, job_id: str, error: str | None = None) -> dict:
        """Record that the job no longer runs: cancelled if a cancel was asked, else failed with `error`, else
        interrupted. The kind's `clean_up` removes what a job that ended this way leaves."""
        job_dir = self.job_dir(job_id)
        if (job_dir / files.CANCEL_FILE).exists():
            state, error = "cancelled", None
        else:
            state = "failed" if error else "interrupted"
            error = error or self.interrupted_message()
        self.clean_up(job_dir, state)
        return files.update_status(job_dir, state=state, error=error, eta_seconds=None, finished=time.time(),
                                   **self.stopped_fields())

    def clean_up(self, job_dir: Path, state: str) -> None:
        """Remove what a job that stopped in `state` (cancelled, failed, interrupted) must not keep."""

    def interrupted_message(self) -> str | None:
        """What an interrupted job's status says (None: nothing, it can be resumed)."""
        return None

    def stopped_fields(self) -> dict:
        """Fields a stopped job's status resets (an export's files and download)."""
        return {}

    def died_message(self, job_dir: Path, code: int) -> str:
        """Why a job whose process exited with `code` before recording its end failed."""
        tail = files.log_tail(job_dir, 5, self.kind.log_file).strip()
        return f"The {self.kind.noun}'s process exited with code {code} before reporting why. Last log lines:\n{tail}"

    def request_cancel(self, job_id: str) -> Path:
        """Leave the cancel file the job polls; returns the job's folder."""
        job_dir = self.job_dir(job_id)
        (job_dir / files.CANCEL_FILE).touch()
        return job_dir

    # ---- clean-up
    def sweep(self, keep_seconds: float | None = None) -> int:
        """Remove staging folders of processes that died preparing them and, given `keep_seconds`, the folders of
        jobs that ended longer ago than that (a damaged one stays: a person decides); returns how many went."""
        if not self.root.is_dir():
            return 0
        removed, cutoff = 0, time.time() - (keep_seconds or 0)
        for path in self.root.iterdir():
            if (m := _STAGING.match(path.name)) and not pid_alive(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
            elif keep_seconds is not None and self._id.match(path.name):
                try:
                    status = files.read_status(path)
                except files.DamagedJobFile:
                    continue
                if status.get("state") not in files.ACTIVE_STATES and (status.get("finished") or 0) < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        return removed
