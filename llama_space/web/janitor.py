"""Scratch clean-up: what finished work leaves behind goes, at start-up and then periodically while serving."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.jobs import files as jobfiles
from llama_space.jobs.processes import pid_alive
from llama_space.jobs.store import JobStore
from llama_space.training.registry import TRAINING

if TYPE_CHECKING:
    from llama_space.settings import Settings

log = logging.getLogger(__name__)

_STALE_ADAPTER_DIR = re.compile(r"^\.(?:tmp|deleting)-.+-(\d+)$")  # adapters.staging_path / adapters.delete
# A failed job's scratch goes too (jobs.files.FINISHED_STATES): the app resumes only interrupted jobs, so
# `train --resume` of a failed job by hand works only until the next sweep removes the checkpoints and dataset
# copy it would need.


def _remove(path: Path) -> bool:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except FileNotFoundError:
        return False
    return True


class Janitor:
    """Removes what finished work leaves behind: training scratch, dead staging dirs, old uploads and zips."""

    def __init__(self, settings: Settings, upload_dir: str | Path | None = None,
                 upload_max_age: float = 2 * 3600, zip_max_age: float = 3600) -> None:
        self.data_dir = Path(settings.data_dir).resolve()
        self.jobs_dir = self.data_dir / TRAINING.folder
        self.adapters_dir = Path(settings.adapters_dir)
        self.upload_dir = Path(upload_dir) if upload_dir else None
        self.upload_max_age, self.zip_max_age = upload_max_age, zip_max_age

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many things of each kind it removed."""
        from llama_space.export.export_jobs import sweep_exports
        from llama_space.service.evaluation_jobs import sweep_evaluations

        return {"exports": sweep_exports(self.data_dir), "evaluations": sweep_evaluations(self.data_dir),
                "job_scratch": self._job_scratch(), "job_staging": self._job_staging(),
                "staging": self._stale_staging(),
                "uploads": self._old_entries(self.upload_dir, "*", self.upload_max_age),
                "zips": self._old_entries(Path(tempfile.gettempdir()), "llama-space-zip-*", self.zip_max_age)}

    def _job_scratch(self) -> int:
        """A finished (completed, cancelled, failed) job keeps its status, metrics and log; its checkpoints and
        dataset copy go."""
        removed = 0
        if not self.jobs_dir.is_dir():
            return 0
        for job_dir in filter(Path.is_dir, self.jobs_dir.iterdir()):
            try:
                status = jobfiles.read_status(job_dir)
                config = jobfiles.read_json(job_dir / jobfiles.JOB_FILE)
            except jobfiles.DamagedJobFile:
                continue  # its state is unknown: keep everything, as the registry's report of it promises
            if status.get("state") not in jobfiles.FINISHED_STATES:
                continue
            dataset = str(config.get("dataset", ""))
            scratch = [job_dir / jobfiles.CHECKPOINTS_DIR]
            if re.fullmatch(r"dataset\.[a-z]{1,8}", dataset):  # only the copy the registry made, never a path
                scratch.append(job_dir / dataset)
            removed += sum(_remove(path) for path in scratch if path.exists())
        return removed

    def _stale_staging(self) -> int:
        """Half-written (.tmp-NAME-PID) or half-deleted (.deleting-NAME-PID) adapter dirs of dead processes."""
        return self._dead_staging(self.adapters_dir, _STALE_ADAPTER_DIR)

    def _job_staging(self) -> int:
        """Job dirs being prepared (.new-JOB_ID-PID) by a process that died before putting them in place."""
        return JobStore(self.data_dir, TRAINING).sweep()

    @staticmethod
    def _dead_staging(root: Path, pattern: re.Pattern) -> int:
        if not root.is_dir():
            return 0
        stale = [path for path in root.iterdir()
                 if (m := pattern.match(path.name)) and not pid_alive(int(m.group(1)))]
        return sum(_remove(path) for path in stale)

    @staticmethod
    def _old_entries(root: Path | None, pattern: str, max_age: float) -> int:
        if root is None or not root.is_dir():
            return 0
        cutoff = time.time() - max_age
        old = [path for path in root.glob(pattern) if path.lstat().st_mtime < cutoff]
        return sum(_remove(path) for path in old)


async def sweep_forever(janitor: Janitor, interval: float = 900) -> None:
    """Sweep now and then every `interval` seconds (run as a task for as long as the app serves)."""
    while True:
        try:
            removed = await asyncio.to_thread(janitor.sweep)
            if any(removed.values()):
                log.info("cleaned up %s", removed)
        except Exception:  # a failed sweep must not stop serving; the next one retries
            log.exception("clean-up failed")
        await asyncio.sleep(interval)
