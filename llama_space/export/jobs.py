"""Export jobs: data_dir/exports/<export_id>/ holds each merge or GGUF export's config, status, log and results.

An export runs as `python -m llama_space.export.run DIR` in its own session, never in a request thread, so a
page reload or an app restart loses nothing; the files say where it stands (the training jobs' vocabulary:
queued|running|completed|failed|cancelled|interrupted). One export runs at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import llama_space
from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export import base, merge
from llama_space.model import source
from llama_space.procutil import pid_alive
from llama_space.training import jobfiles

if TYPE_CHECKING:
    from llama_space.settings import Settings

EXPORTS_DIR = "exports"
LOG_FILE = "export.log"
OUT_DIR = "out"  # the results, served for download
SCRATCH_DIR = "scratch"  # the merged model a GGUF export converts (removed when it ends)
RUN_MODULE = "llama_space.export.run"
KINDS = ("merge", "gguf")
QTYPES = ("f16", "bf16", "q8_0", "q4_0")
GGUF_BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # 32-weight blocks + scale
KEEP_SECONDS = 24 * 3600  # a finished export's folder is swept this long after it ended
_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{16}$")  # long random part: results are served from the folder
_STAGING = re.compile(r"^\.new-.+-(\d+)$")


def is_export_id(text: str) -> bool:
    """Whether `text` has the form of an export id (adapter names never do: they cannot be this long and random)."""
    return isinstance(text, str) and bool(_ID.match(text))


def exports_root(data_dir: Path) -> Path:
    """Where export folders live."""
    return Path(data_dir).resolve() / EXPORTS_DIR


def disk_needed(plan: merge.MergePlan, kind: str, qtype: str) -> int:
    """Disk an export takes at its peak: the merged folder and its zip, or the merged scratch and the GGUF file."""
    if kind == "merge":
        return 2 * plan.disk_bytes
    return plan.disk_bytes + int(plan.parameters * GGUF_BYTES_PER_WEIGHT[qtype])


class ExportJobs:
    """Starts, watches and cancels export jobs; reconciles a status with the process behind it when read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = exports_root(settings.data_dir)
        self._lock = threading.RLock()  # serialises launches with the status reads that could mark them dead

    def plan(self, adapter: str) -> merge.MergePlan:
        """The merge plan of `adapter` into the app's base (the base must be on this machine already)."""
        path = adapters.adapter_path(Path(self.settings.adapters_dir), adapter)
        if not adapters.is_complete(path):
            raise UserError(f"There is no adapter named {adapter!r}.")
        base.check_same_base(adapters.read_metadata(path), self.settings.model, adapter)
        return merge.plan_merge(source.local_dir(self.settings.model, self.settings.cache_dir), path)

    def start(self, adapter: str, kind: str = "merge", qtype: str = "q8_0") -> dict:
        """Check the export fits, write its folder and launch it; return its status (with `needs`)."""
        qtype = (qtype or "").lower()
        if kind not in KINDS:
            raise UserError(f"Unknown export kind {kind!r}; choose merge (safetensors) or gguf.")
        if kind == "gguf" and qtype not in QTYPES:
            raise UserError(f"Unknown GGUF quantization {qtype!r}; choose one of {', '.join(QTYPES)}.")
        plan = self.plan(adapter)
        self.root.mkdir(parents=True, exist_ok=True)
        merge.check_fits(plan, self.root, disk_needed(plan, kind, qtype) - plan.disk_bytes)
        with self._lock:
            running = self.active()
            if running:
                raise UserError(f"An export is already running ({running['export_id']}); wait for it to finish "
                                "or cancel it.")
            export_id = self._create(adapter, kind, qtype if kind == "gguf" else "", plan)
            self._launch(export_id)
            return self.status(export_id)

    def _create(self, adapter: str, kind: str, qtype: str, plan: merge.MergePlan) -> str:
        export_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(8)
        staging = self.root / f".new-{export_id}-{os.getpid()}"
        needs = plan.describe(disk_needed(plan, kind, qtype))
        try:
            staging.mkdir()
            jobfiles.write_json_atomic(staging / jobfiles.JOB_FILE, {
                "export_id": export_id, "kind": kind, "qtype": qtype, "adapter": adapter,
                "model": self.settings.model, "cache_dir": str(Path(self.settings.cache_dir).resolve()),
                "adapter_dir": str(plan.adapter_dir.resolve()), "needs": needs, "metadata": plan.metadata})
            jobfiles.update_status(staging, export_id=export_id, state="queued", kind=kind, qtype=qtype,
                                   adapter=adapter, stage="queued", progress=0.0, needs=needs, error=None,
                                   files=[], download=None, created=time.time(), started=None, finished=None,
                                   pid=None)
            staging.rename(self.root / export_id)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"Could not create the export folder ({exc.strerror or 'input/output error'}).") from exc
        return export_id

    def _launch(self, export_id: str) -> None:
        job_dir = self.export_dir(export_id)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(llama_space.__file__).parent.parent),
                                                             os.environ.get("PYTHONPATH")]))}
        try:
            with open(job_dir / LOG_FILE, "ab") as log:
                process = subprocess.Popen([sys.executable, "-m", RUN_MODULE, str(job_dir)], env=env,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        except OSError as exc:
            message = f"Could not start the export process ({exc.strerror or type(exc).__name__})."
            self._mark_stopped(job_dir, message)
            raise UserError(message) from exc
        (job_dir / jobfiles.PID_FILE).write_text(str(process.pid))
        threading.Thread(target=self._reap, args=(job_dir, process), daemon=True, name=f"reap-{export_id}").start()

    def _reap(self, job_dir: Path, process: subprocess.Popen) -> None:
        """Wait for the process (no zombie) and record a death it could not report itself."""
        code = process.wait()
        with self._lock, contextlib.suppress(jobfiles.DamagedJobFile):
            if jobfiles.read_json(job_dir / jobfiles.STATUS_FILE).get("state") in jobfiles.ACTIVE_STATES:
                error = None if code < 0 else (f"The export process exited with code {code} before reporting "
                                               "why; the export log has the details.")
                self._mark_stopped(job_dir, error)

    def export_dir(self, export_id: str) -> Path:
        """The folder of export `export_id`; UserError for a malformed or unknown id."""
        path = self.root / export_id if is_export_id(export_id) else None
        if path is None or not (path / jobfiles.JOB_FILE).is_file():
            raise UserError(f"There is no export {export_id!r}.")
        return path

    def config(self, export_id: str) -> dict:
        """The export's job.json: kind, qtype, adapter, the adapter's metadata at the start."""
        return jobfiles.read_json(self.export_dir(export_id) / jobfiles.JOB_FILE)

    def status(self, export_id: str) -> dict:
        """status.json plus elapsed_seconds, after marking an export whose process is gone."""
        job_dir = self.export_dir(export_id)
        with self._lock:
            status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
            if status.get("state") in jobfiles.ACTIVE_STATES and not self._alive(job_dir, status):
                status = self._mark_stopped(job_dir)
        started, end = status.get("started"), status.get("finished") or time.time()
        return {**status, "export_id": export_id, "elapsed_seconds": round(end - started, 1) if started else None}

    @staticmethod
    def _alive(job_dir: Path, status: dict) -> bool:
        try:
            pid = int(status.get("pid") or (job_dir / jobfiles.PID_FILE).read_text())
        except (OSError, ValueError):
            return False
        return pid_alive(pid, job_dir.name)

    @staticmethod
    def _mark_stopped(job_dir: Path, error: str | None = None) -> dict:
        """The process is gone: cancelled if asked, failed with `error`, else interrupted; partial results go."""
        shutil.rmtree(job_dir / SCRATCH_DIR, ignore_errors=True)
        shutil.rmtree(job_dir / OUT_DIR, ignore_errors=True)
        if (job_dir / jobfiles.CANCEL_FILE).exists():
            changes = {"state": "cancelled", "error": None}
        elif error:
            changes = {"state": "failed", "error": error}
        else:
            changes = {"state": "interrupted", "error": "The export stopped before it finished (its process is "
                                                        "gone); start it again."}
        return jobfiles.update_status(job_dir, **changes, finished=time.time(), files=[], download=None)

    def cancel(self, export_id: str) -> dict:
        """Stop a queued or running export (its partial results are removed)."""
        with self._lock:
            status = self.status(export_id)
            if status["state"] not in jobfiles.ACTIVE_STATES:
                raise UserError(f"Export {export_id} is already {status['state']}; there is nothing to cancel.")
            job_dir = self.export_dir(export_id)
            (job_dir / jobfiles.CANCEL_FILE).touch()
            with contextlib.suppress(OSError, ValueError):  # the run module cleans up on SIGTERM
                pid = int(status.get("pid") or (job_dir / jobfiles.PID_FILE).read_text())
                if pid_alive(pid, export_id):
                    os.kill(pid, signal.SIGTERM)
        return status

    def list_exports(self) -> list[dict]:
        """Every export's status, newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if _ID.match(path.name) and (path / jobfiles.JOB_FILE).is_file():
                with contextlib.suppress(jobfiles.DamagedJobFile):
                    found.append(self.status(path.name))
        return sorted(found, key=lambda s: (s.get("created") or 0, s["export_id"]), reverse=True)

    def active(self) -> dict | None:
        """The queued or running export, if any."""
        return next((s for s in self.list_exports() if s.get("state") in jobfiles.ACTIVE_STATES), None)

    def result(self, export_id: str) -> Path:
        """The file to download: the merged model's zip, or the GGUF file."""
        status = self.status(export_id)
        if status["state"] != "completed":
            raise UserError(f"Export {export_id} is {status['state']}; only a completed export can be downloaded.")
        path = self.export_dir(export_id) / OUT_DIR / str(status.get("download") or "")
        if not status.get("download") or not path.is_file():
            raise UserError(f"The files of export {export_id} are gone; export again.")
        return path

    def wait(self, export_id: str, timeout: float, poll: float = 0.5) -> dict:
        """The status once the export no longer queues or runs, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (status := self.status(export_id))["state"] in jobfiles.ACTIVE_STATES and time.monotonic() < deadline:
            time.sleep(poll)
        return status


def sweep_exports(data_dir: Path, keep_seconds: float = KEEP_SECONDS) -> int:
    """Remove export folders that ended over `keep_seconds` ago and staging folders of dead processes (the
    janitor calls this); returns how many went."""
    root = exports_root(data_dir)
    if not root.is_dir():
        return 0
    removed, cutoff = 0, time.time() - keep_seconds
    for path in root.iterdir():
        if (m := _STAGING.match(path.name)) and not pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif _ID.match(path.name):
            try:
                status = jobfiles.read_json(path / jobfiles.STATUS_FILE)
            except jobfiles.DamagedJobFile:
                continue  # unknown state: a person decides
            if status.get("state") not in jobfiles.ACTIVE_STATES and (status.get("finished") or 0) < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed
