"""Launching and watching training jobs, one at a time, in the placement the memory planner chose.

A process job runs as `python -m llama_space.training.train --job-dir DIR` in its own session, so the app
never blocks and a crash in training cannot take the app down (nor an app restart the training). With
several CUDA GPUs visible it runs under `accelerate launch --multi_gpu` (one process per GPU, DDP; see
docs/multi_gpu.md). A shared job trains in a thread of the app on the served weights (training/shared.py,
run by shared_runs.SharedRuns); the next app start resumes one the app's end interrupted.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from llama_space.errors import UserError
from llama_space.inference.backend import ChatBackend, SharesWeights
from llama_space.jobs import files as jobfiles
from llama_space.jobs import launcher
from llama_space.settings import Settings
from llama_space.training.params import TrainingParams
from llama_space.training.registry import JobRegistry
from llama_space.training.shared_runs import SharedRuns, plan_job
from llama_space.training.tracking import require_installed as require_tracker

TRAIN_MODULE = "llama_space.training.train"


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_command(job_dir: Path, resume: bool) -> list[str]:
    """The command line that runs the job in `job_dir`: one process, or one per GPU when several are visible.

    Several run the same entry point under `accelerate launch` (torchrun underneath): DDP over NCCL, or over
    gloo on a machine without GPUs (as the tests do, by pretending to see some). The flags are explicit so
    that a user's accelerate default config cannot change what the app starts; a free port lets several jobs
    (or test runs) share a machine.
    """
    args = [TRAIN_MODULE, "--job-dir", str(job_dir)] + (["--resume"] if resume else [])
    gpus = _cuda_devices()
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
                "--dynamo_backend", "no", "-m", *args]
    return [sys.executable, "-m", *args]


class JobRunner:
    """Starts, watches, cancels and resumes training jobs stored under settings.data_dir/jobs."""

    def __init__(self, settings: Settings, backend: ChatBackend | None = None) -> None:
        self.registry = JobRegistry(settings)
        self.launcher = launcher.Launcher(self.registry)
        self._lock = self.registry.lock  # serialises launches with the status reads that could mark them dead
        # Starts one at a time, so a second start is refused before it tokenizes its data for nothing (and the
        # shared tokenizer never encodes for two threads at once); status reads never wait on this one.
        self._start_lock = threading.Lock()
        # Shared jobs need weights served in this process; a remote backend has none.
        manager = backend if isinstance(backend, SharesWeights) else None
        self.shared = SharedRuns(self.launcher, manager)
        if manager is not None:
            self.shared.resume_interrupted(self.resume)

    def start(self, dataset_path: str | Path, adapter_name: str,
              params: TrainingParams | dict | None = None) -> str:
        """Validate and launch a new job; return its id. Refused while another job is queued or running."""
        if not isinstance(params, TrainingParams):
            params = TrainingParams.from_dict(params or {})
        with self._start_lock:
            with self._lock:
                self._refuse_if_busy()
            require_tracker(params.report_to)  # at once, not after the job has loaded its model
            params, plan = plan_job(self.registry.settings, self.shared.manager, params)  # UserError: no room
            # Tokenizing and copying take seconds on a large file: done outside the lock the 1 s polls take.
            job_id = self.registry.prepare(dataset_path, adapter_name, params, plan)
            try:
                with self._lock:
                    self._refuse_if_busy()  # again: a job may have been resumed meanwhile
                    self.registry.commit(job_id)
                    self._launch(job_id, resume=False)
            finally:
                self.registry.discard(job_id)  # a no-op once committed
        return job_id

    def resume(self, job_id: str) -> dict:
        """Continue an interrupted job from its last complete checkpoint (from the start if it has none)."""
        with self._lock:
            status = self.registry.status(job_id)
            if not status["resumable"]:
                raise UserError(f"Job {job_id} is {status['state']}; only an interrupted job can be resumed.")
            self._refuse_if_busy()
            self._launch(job_id, resume=True)
            return self.registry.status(job_id)

    def cancel(self, job_id: str) -> dict:
        """Ask a job to stop (within one optimizer step); an interrupted job is cancelled at once."""
        with self._lock:
            status = self.registry.status(job_id)
            if status["state"] not in (*jobfiles.ACTIVE_STATES, "interrupted"):
                raise UserError(f"Job {job_id} is already {status['state']}; there is nothing to cancel.")
            self.registry.request_cancel(job_id)
            if status["state"] == "interrupted":  # no process left to notice the flag
                self.registry.mark_stopped(job_id)
            return self.registry.status(job_id)

    def status(self, job_id: str) -> dict:
        """status.json (state, step, total_steps, loss, eval_loss, eta_seconds, adapter, error, ...) plus
        job_id, resumable, checkpoint_step, elapsed_seconds and log_tail (last lines of train.log)."""
        with self._lock:
            status = self.registry.status(job_id)
        return {**status, "log_tail": jobfiles.log_tail(self.registry.job_dir(job_id))}

    def metrics(self, job_id: str) -> list[dict]:
        """The job's loss/eval_loss history, one record per logged step."""
        return jobfiles.read_metrics(self.registry.job_dir(job_id))

    def jobs(self) -> list[dict]:
        """Every job's status, newest first."""
        with self._lock:
            return self.registry.list_jobs()

    def active(self) -> dict | None:
        """The queued or running job, if any."""
        with self._lock:
            return self.registry.active()

    def close(self, timeout: float = 120) -> None:
        """Checkpoint and stop a shared job (the next start resumes it); process jobs go on by themselves."""
        self.shared.stop_all(timeout)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.5) -> dict:
        """Block until the job is no longer queued/running (or `timeout` seconds pass); return its status."""
        return launcher.wait(lambda: self.status(job_id), timeout, poll)

    def _refuse_if_busy(self) -> None:
        running = self.registry.active()
        if running:
            raise UserError(f"A training job is already running (job {running['job_id']}); "
                            "wait for it to finish or cancel it.")

    def _launch(self, job_id: str, resume: bool) -> None:
        if self.shared.placement(job_id) == "shared":
            self.shared.launch(job_id, resume)
            return
        self.launcher.start_process(job_id, train_command(self.registry.job_dir(job_id), resume), "training")
