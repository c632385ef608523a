"""The layout of a job directory and the atomic file writes the UI polls, for every kind of background job.

A job directory holds job.json (its typed configuration, written once), status.json (its state and progress,
rewritten whole), its log, a pid file and, when asked to stop, a cancel file. A kind of job may add its own
files (training: metrics.jsonl and checkpoints/; export: out/).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import TypedDict

from llama_space.errors import UserError

JOB_FILE = "job.json"  # the job's configuration, written once at creation
STATUS_FILE = "status.json"  # current state and progress, rewritten atomically
METRICS_FILE = "metrics.jsonl"  # one JSON line per logged training step or evaluation
LOG_FILE = "train.log"  # a training job's stdout and stderr (each kind names its log: store.JobKind.log_file)
CANCEL_FILE = "cancel"  # its presence asks the job to stop
PID_FILE = "pid"  # pid of the process the launcher started
CHECKPOINTS_DIR = "checkpoints"  # a training job's resumable state
KEPT_ADAPTER_DIR = "adapter"  # where a trained adapter waits when its name was taken meanwhile

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
FINISHED_STATES = ("completed", "failed", "cancelled")


class JobStatus(TypedDict, total=False):
    """The fields every job's status.json has (a kind adds its own: a training job's step and loss, an
    export's stage and files); `read_status` checks them when read back."""

    state: str  # one of STATES
    created: float  # seconds since the epoch
    started: float | None
    finished: float | None
    error: str | None  # why it failed, in words for the user
    pid: int | None  # the process that runs it (for a job run in a thread: the app's)


_DESCRIPTIONS = {JOB_FILE: "configuration file", STATUS_FILE: "status file"}


class DamagedJobFile(UserError):
    """A job file that exists but holds no JSON object (cut short, emptied, overwritten): that job cannot go on."""

    def __init__(self, path: Path, why: str) -> None:
        what = _DESCRIPTIONS.get(Path(path).name, f"file {Path(path).name}")
        super().__init__(f"The job's {what} is damaged ({why}); its checkpoints and log are kept in the job folder.")


def _finite_or_none(value):
    """JSON has no NaN: a non-finite float is written as null (the error field says what happened)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temp file and rename it over `path`, so a reader never sees a partial file."""
    path = Path(path)
    # One temp name per writing thread: a job's thread and a status read in another may both write the file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    clean = {key: _finite_or_none(value) for key, value in data.items()}
    tmp.write_text(json.dumps(clean, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when it does not exist; DamagedJobFile when it holds anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise DamagedJobFile(path, "not valid JSON") from exc
    if not isinstance(data, dict):
        raise DamagedJobFile(path, "not a JSON object")
    return data


def read_status(job_dir: Path) -> JobStatus:
    """status.json ({} when not written yet); DamagedJobFile when it is not a status (no object, an unknown
    state, a pid or time that is not a number)."""
    path = Path(job_dir) / STATUS_FILE
    status = read_json(path)
    if status.get("state", "queued") not in STATES:
        raise DamagedJobFile(path, f"unknown state {status.get('state')!r}")
    for key in ("created", "started", "finished", "pid"):
        value = status.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DamagedJobFile(path, f"{key} is not a number")
    return status


def update_status(job_dir: Path, **changes) -> dict:
    """Merge `changes` into status.json, stamp `updated`, and return the new status."""
    status = {**read_status(job_dir), **changes, "updated": time.time()}
    write_json_atomic(Path(job_dir) / STATUS_FILE, status)
    return status


def append_metrics(job_dir: Path, record: dict) -> None:
    """Append one record to metrics.jsonl (a line is small enough to be written whole)."""
    clean = {key: _finite_or_none(value) for key, value in record.items()}
    with open(Path(job_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(clean) + "\n")


def read_metrics(job_dir: Path) -> list[dict]:
    """All metric records; a line cut short by a crash is skipped."""
    try:
        lines = (Path(job_dir) / METRICS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_metrics(job_dir: Path, step: int) -> None:
    """Drop records after `step`: on resume those steps are trained (and logged) again."""
    kept = [r for r in read_metrics(job_dir) if r.get("step", 0) <= step]
    tmp = Path(job_dir) / f".{METRICS_FILE}.tmp-{os.getpid()}-{threading.get_ident()}"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, Path(job_dir) / METRICS_FILE)


def log_tail(job_dir: Path, lines: int = 20, name: str = LOG_FILE) -> str:
    """The last `lines` lines of the job's log `name` (read from its end: the log of a long run is large)."""
    try:
        with open(Path(job_dir) / name, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            tail = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "".join(tail.splitlines(keepends=True)[-lines:])
