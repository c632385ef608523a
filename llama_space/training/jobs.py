"""The on-disk job registry: data_dir/jobs/<job_id>/ holds each job's config, data copy, status and log.

The registry is the source of truth across app restarts: a job whose process is gone while its
status still says queued/running is marked `interrupted` (or `cancelled` if a cancel was asked) when read, and
a job whose job.json or status.json cannot be read is reported failed, that job alone. A shared job (trained in
a thread of the app) is gone when the app that ran it is, or, in this process, when its thread has ended.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.model.source import base_model_name, resolve_model
from llama_space.procutil import pid_alive
from llama_space.training import checkpoints, jobfiles
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llama_space.settings import Settings

_JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
JOB_ID_IN_TEXT = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")
# An absolute path in a log or an error: not part of a URL, a relative path or a fraction ("5/10").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])/[^\s'\"<>(),;:]+")
STAGING_PREFIX = ".new-"  # a job dir being prepared: .new-<job_id>-<pid of the preparing process>


def server_places(settings: Settings) -> list[tuple[str, str]]:
    """(absolute folder, what users see instead) for the server's folders a log or an error may name, deepest
    first; each folder both as given and with its links resolved (the job's own files use the resolved one)."""
    import llama_space

    places = [(settings.data_dir, "<data>"), (settings.cache_dir, "<data>/cache"),
              (settings.adapters_dir, "<adapters>"), (Path(llama_space.__file__).parent.parent, "<app>"),
              (Path(sys.prefix), "<python>"), (Path(sys.base_prefix), "<python>")]
    if settings.model and Path(settings.model).exists():
        places.append((Path(settings.model), "<model>"))
    found = {str(form): shown for folder, shown in places
             for form in (Path(folder).absolute(), Path(folder).resolve())}
    return sorted(found.items(), key=lambda item: len(item[0]), reverse=True)


def hide_paths(text: str, places: list[tuple[str, str]]) -> str:
    """`text` with each absolute path shown from one of `places` (<data>/jobs/...), else by its last part: users
    see what a log or an error says, not how the server's disk is laid out."""

    def shown(match: re.Match) -> str:
        path = match.group()
        for folder, name in places:
            if path == folder or path.startswith(folder.rstrip("/") + "/"):
                return name + path[len(folder):]
        return "…/" + path.rstrip("/").rsplit("/", 1)[-1]

    return _ABSOLUTE_PATH.sub(shown, text)


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


def job_pid(job_dir: Path, status: dict) -> int | None:
    """The job's process id: the one the training process reported, else the one the runner launched."""
    if status.get("pid"):
        return int(status["pid"])
    try:
        return int((Path(job_dir) / jobfiles.PID_FILE).read_text())
    except (OSError, ValueError):
        return None


class JobRegistry:
    """Creates job directories and reads their status, reconciling it with the processes that run them."""

    # Ids of the shared jobs training in threads of this process now, whichever runner started them (a class
    # attribute: a second runner in the same process must not take a running job for an interrupted one).
    in_process: ClassVar[set[str]] = set()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.data_dir).resolve() / "jobs"
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._places = server_places(settings)

    def hide_paths(self, text: str) -> str:
        """`text` (a job's log or error) without this server's absolute paths (see hide_paths)."""
        return hide_paths(text, self._places)

    def _tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        source = resolve_model(self.settings.model, self.settings.cache_dir)
        if source not in self._tokenizers:
            self._tokenizers[source] = AutoTokenizer.from_pretrained(source, token=os.environ.get("HF_TOKEN"))
        return self._tokenizers[source]

    def create(self, dataset_path: str | Path, adapter_name: str, params: TrainingParams,
               plan: dict | None = None) -> str:
        """Prepare a job and put it in place at once (nothing launches it); return its id."""
        job_id = self.prepare(dataset_path, adapter_name, params, plan)
        self.commit(job_id)
        return job_id

    def prepare(self, dataset_path: str | Path, adapter_name: str, params: TrainingParams,
                plan: dict | None = None) -> str:
        """Validate the name and the data and write the whole job dir under a hidden name; return the job id.

        `plan` (the memory planner's choice: placement, quantization, estimate, reason) goes into job.json and
        the status; without one the job runs in its own process.

        This is the slow part of a start (tokenizing, copying up to max_upload_mb), done before anything is
        locked; the dir stays out of every listing until `commit` renames it into place, or `discard` drops it.
        """
        from llama_space.data import dataset_fingerprint
        from llama_space.training.methods import get_method

        adapters_dir = Path(self.settings.adapters_dir).resolve()
        if adapters.adapter_path(adapters_dir, adapter_name).exists():
            raise UserError(adapters.exists_message(adapter_name))
        dataset = Path(dataset_path)
        if not dataset.is_file():
            raise UserError(f"Dataset file {dataset.name!r} not found; upload it again.")
        max_bytes = self.settings.max_upload_mb * 2**20
        examples = get_method(params.method).build_examples(dataset, self._tokenizer(), params, max_bytes)
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        staging, copy = self._staging(job_id), "dataset" + dataset.suffix.lower()
        step = "create the job folder"
        try:
            staging.mkdir(parents=True)
            step = "copy the dataset into the job folder"
            shutil.copyfile(dataset, staging / copy)
            step = "write the job's files"
            jobfiles.write_json_atomic(staging / jobfiles.JOB_FILE, {
                "job_id": job_id, "model": self.settings.model, "base_model": base_model_name(self.settings.model),
                "cache_dir": str(Path(self.settings.cache_dir).resolve()), "adapters_dir": str(adapters_dir),
                "adapter": adapter_name, "dataset": copy, "dataset_name": dataset.name,
                "dataset_fingerprint": dataset_fingerprint(staging / copy), "examples": len(examples),
                "max_bytes": max_bytes, "params": params.to_dict(), "plan": plan})
            jobfiles.update_status(staging, job_id=job_id, state="queued", adapter=adapter_name, plan=plan,
                                   placement=(plan or {}).get("placement", "process"),
                                   created=time.time(), step=0, total_steps=None, loss=None, eval_loss=None,
                                   eta_seconds=None, error=None, pid=None, started=None, finished=None)
        except OSError as exc:  # disk full, quota, permissions: leave no half-made job behind
            self.discard(job_id)
            raise UserError(f"Could not {step} ({exc.strerror or 'input/output error'}); "
                            "no job was created.") from exc
        return job_id

    def commit(self, job_id: str) -> None:
        """Put a prepared job in place, where listings and the runner find it."""
        os.rename(self._staging(job_id), self.root / job_id)

    def discard(self, job_id: str) -> None:
        """Remove a prepared job that was not committed (no-op once it was)."""
        shutil.rmtree(self._staging(job_id), ignore_errors=True)

    def _staging(self, job_id: str) -> Path:
        # Hidden and not an id, so never listed; the pid lets the janitor sweep one whose process died.
        return self.root / f"{STAGING_PREFIX}{job_id}-{os.getpid()}"

    def job_dir(self, job_id: str) -> Path:
        """The directory of job `job_id`; UserError for a malformed or unknown id."""
        path = self.root / job_id if isinstance(job_id, str) and _JOB_ID.match(job_id) else None
        if path is None or not (path / jobfiles.JOB_FILE).is_file():
            raise UserError(f"There is no training job {job_id!r}.")
        return path

    def config(self, job_id: str) -> dict:
        """The job's job.json."""
        return jobfiles.read_json(self.job_dir(job_id) / jobfiles.JOB_FILE)

    def status(self, job_id: str) -> dict:
        """status.json plus derived fields, after marking a job whose process is gone (or whose files are damaged)."""
        job_dir = self.job_dir(job_id)
        try:
            jobfiles.read_json(job_dir / jobfiles.JOB_FILE)
            status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
        except jobfiles.DamagedJobFile as exc:
            return self._derived(job_dir, self._damaged(job_dir, exc))
        if status.get("state", "queued") in jobfiles.ACTIVE_STATES and not self._runs(job_dir, status):
            status = self.mark_stopped(job_id)
        return self._derived(job_dir, status)

    def _runs(self, job_dir: Path, status: dict) -> bool:
        """Whether the job's process (or, for a shared job, its thread) still runs it."""
        if status.get("placement") == "shared":
            pid = status.get("pid")
            if pid in (None, os.getpid()):  # queued or running here: its thread says
                return job_dir.name in self.in_process
            # Another app process trains it: the app's command line has no job id, so its start time tells a
            # recycled pid (containers restart the app under the same few pids) from the app that took the job.
            return pid_alive(pid) and process_start(pid) == status.get("process_start")
        pid = job_pid(job_dir, status)
        return pid is not None and process_alive(pid, job_dir)

    @staticmethod
    def _damaged(job_dir: Path, exc: jobfiles.DamagedJobFile) -> dict:
        """A damaged job's status: failed, with what is still readable; its files stay as they are for a person."""
        readable = {}
        for name in (jobfiles.JOB_FILE, jobfiles.STATUS_FILE):
            with contextlib.suppress(jobfiles.DamagedJobFile):
                readable[name] = jobfiles.read_json(job_dir / name)
        status = readable.get(jobfiles.STATUS_FILE, {"adapter": readable.get(jobfiles.JOB_FILE, {}).get("adapter")})
        created = time.mktime(time.strptime(job_dir.name[:15], "%Y%m%d-%H%M%S"))  # the id starts with it
        return {"created": created, **status, "state": "failed", "error": str(exc), "eta_seconds": None}

    def mark_stopped(self, job_id: str, error: str | None = None) -> dict:
        """Record that the job's process is gone: cancelled if a cancel was asked, else interrupted/failed."""
        job_dir = self.job_dir(job_id)
        if (job_dir / jobfiles.CANCEL_FILE).exists():
            shutil.rmtree(job_dir / jobfiles.CHECKPOINTS_DIR, ignore_errors=True)
            return jobfiles.update_status(job_dir, state="cancelled", eta_seconds=None, finished=time.time())
        state = "failed" if error else "interrupted"
        return jobfiles.update_status(job_dir, state=state, error=error, eta_seconds=None, finished=time.time())

    def _derived(self, job_dir: Path, status: dict) -> dict:
        latest = checkpoints.latest(job_dir / jobfiles.CHECKPOINTS_DIR)
        started = status.get("started")
        end = status.get("finished") or time.time()
        return {**status, "job_id": job_dir.name,
                "resumable": status.get("state") == "interrupted",
                "checkpoint_step": checkpoints.step_of(latest) if latest else None,
                "elapsed_seconds": round(end - started, 1) if started else None}

    def list_jobs(self) -> list[dict]:
        """Every job's status, newest first."""
        if not self.root.is_dir():
            return []
        ids = [p.name for p in self.root.iterdir() if _JOB_ID.match(p.name) and (p / jobfiles.JOB_FILE).is_file()]
        found = [self.status(job_id) for job_id in ids]
        return sorted(found, key=lambda s: (s.get("created") or 0, s["job_id"]), reverse=True)

    def active(self) -> dict | None:
        """The queued or running job, if any."""
        return next((s for s in self.list_jobs() if s.get("state") in jobfiles.ACTIVE_STATES), None)
