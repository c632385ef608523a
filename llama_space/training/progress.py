"""The TrainerCallback that reports progress into the job dir, honours cancel requests and stops on NaN."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class JobProgress(TrainerCallback):
    """Writes status.json and metrics.jsonl every step; stops on a cancel flag or a non-finite loss."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = Path(job_dir)
        self.cancelled = False
        self.losses: list[float] = []  # training loss per step of this run
        self.last_eval: tuple[int, float] | None = None  # (step, eval_loss) of the latest evaluation
        self._start_time = 0.0
        self._start_step = 0

    def cancel_requested(self) -> bool:
        """Whether the cancel flag file exists (checked by every rank: the file is on a shared disk)."""
        return (self.job_dir / jobfiles.CANCEL_FILE).exists()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_time, self._start_step = time.monotonic(), state.global_step
        if state.is_world_process_zero:
            jobfiles.truncate_metrics(self.job_dir, state.global_step)
            jobfiles.update_status(self.job_dir, step=state.global_step, total_steps=state.max_steps)
        log.info("training: step %d of %d", state.global_step, state.max_steps)

    def on_substep_end(self, args, state, control, **kwargs):
        # Between micro-batches of one optimizer step: lets a cancel land before the step completes.
        self._check_cancel(control)

    def on_step_end(self, args, state, control, **kwargs):
        self._check_cancel(control)
        if state.is_world_process_zero:
            jobfiles.update_status(self.job_dir, step=state.global_step, total_steps=state.max_steps,
                                   epoch=state.epoch, eta_seconds=self._eta(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key in ("loss", "eval_loss"):
            if key in logs and not math.isfinite(logs[key]):
                raise TrainingDiverged(
                    f"The {key.replace('_', ' ')} became {logs[key]} at step {state.global_step}: training "
                    "diverged. Lower the learning rate, and check the data for empty or broken rows.")
        if "loss" in logs:
            self.losses.append(logs["loss"])
        if "eval_loss" in logs:
            self.last_eval = (state.global_step, logs["eval_loss"])
        if not state.is_world_process_zero or not ({"loss", "eval_loss"} & logs.keys()):
            return
        record = {"step": state.global_step, "time": time.time(),
                  **{k: logs[k] for k in ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch") if k in logs}}
        jobfiles.append_metrics(self.job_dir, record)
        jobfiles.update_status(self.job_dir, **{k: logs[k] for k in ("loss", "eval_loss") if k in logs})
        log.info("step %d/%d %s", state.global_step, state.max_steps,
                 " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("step", "time")))

    def _check_cancel(self, control) -> None:
        if not self.cancelled and self.cancel_requested():
            log.info("cancel requested: stopping")
            self.cancelled = True
        if self.cancelled:
            control.should_training_stop = True

    def _eta(self, state) -> float | None:
        """Seconds left, from the average step time of this run."""
        done = state.global_step - self._start_step
        if done <= 0:
            return None
        per_step = (time.monotonic() - self._start_time) / done
        return round(per_step * max(0, state.max_steps - state.global_step), 1)

    def final_train_loss(self, window: int = 5) -> float | None:
        """Mean training loss over the last `window` steps (one step's loss alone is noisy)."""
        recent = self.losses[-window:]
        return sum(recent) / len(recent) if recent else None
