"""The runner's side of placements: planning a job against free memory, and running shared jobs in threads.

A shared job's files, status, metrics, checkpoints, cancel and publishing are the process job's (it runs the
same `train.run`, in a thread, on the `training_copy()` of a backend that declares backend.SharesWeights); while
it runs, chat's admitted requests may hold only the KV cache that fits in the memory the plan left beside it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING

from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from llama_space.inference.backend import SharesWeights
    from llama_space.jobs.launcher import Launcher
    from llama_space.settings import Settings
    from llama_space.training.planner import Plan

log = logging.getLogger(__name__)

NO_SERVED_MODEL = ("Job {job_id} trains beside chat on the served model (placement shared), but this app has no "
                   "model in its own process (chat goes to a remote backend); start a new job with placement "
                   "process instead.")


def plan_job(settings: Settings, manager: SharesWeights | None, params: TrainingParams
             ) -> tuple[TrainingParams, dict]:
    """(params with the planner's placement, quantization and checkpointing filled in, the plan's record for
    job.json and the status); UserError with the numbers when the job fits nowhere."""
    from llama_space.model.device_memory import free_memory
    from llama_space.model.loading import pick_device
    from llama_space.training import memory, planner

    if manager is not None:
        config, device, dtype = manager.model.config, str(manager.model.device), manager.model.dtype
    else:
        device = pick_device(settings.device)
        config, dtype = _config(settings), "bfloat16" if device.startswith("cuda") else "float32"
    chosen = planner.plan(config, params, free_bytes=free_memory(device), device=device,
                          served_dtype=dtype, served_in_process=manager is not None)
    checkpointing = params.gradient_checkpointing
    if checkpointing == "auto":  # as the estimate assumed it, so the job fits where the planner said
        checkpointing = "on" if chosen.estimate.checkpointing else "off"
    resolved = dataclasses.replace(params, placement=chosen.placement, quantization=chosen.quantization,
                                   gradient_checkpointing=checkpointing)
    return resolved, plan_record(chosen, params, memory.kv_bytes_per_token(memory.model_shape(config), dtype))


def _config(settings: Settings):
    from transformers import AutoConfig

    from llama_space.model.source import resolve_model

    return AutoConfig.from_pretrained(resolve_model(settings.model, settings.cache_dir),
                                      token=os.environ.get("HF_TOKEN") or None)


def plan_record(plan: Plan, asked: TrainingParams, kv_bytes_per_token: int) -> dict:
    """What job.json and the status keep of a plan: the choice, the figures and the reason."""
    estimate = plan.estimate
    return {"placement": plan.placement, "quantization": plan.quantization, "device": plan.device,
            "estimate_gb": round(estimate.total_bytes / 1e9, 2), "free_gb": round(plan.free_bytes / 1e9, 2),
            "reason": plan.reason, "asked": {"placement": asked.placement, "quantization": asked.quantization},
            "estimate_bytes": estimate.total_bytes, "free_bytes": plan.free_bytes,
            "kv_reserve_bytes": estimate.parts.get("kv_reserve", 0), "kv_bytes_per_token": kv_bytes_per_token}


def chat_token_bound(plan: dict) -> int | None:
    """Tokens of KV cache chat may hold beside the job: the free memory the job's estimate leaves (which
    includes the planner's reserve for chat); None for a plan recorded without the figures."""
    try:
        job = plan["estimate_bytes"] - plan["kv_reserve_bytes"]
        return max(0, plan["free_bytes"] - job) // max(1, plan["kv_bytes_per_token"])
    except (KeyError, TypeError):
        return None


class SharedRuns:
    """Starts shared jobs in threads of this process, stops them when the app closes, resumes them after."""

    def __init__(self, launcher: Launcher, manager: SharesWeights | None) -> None:
        self.launcher = launcher
        self.registry = launcher.store
        self.manager = manager
        self._stops: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def placement(self, job_id: str) -> str:
        """Where the job runs: shared, or process (also for jobs written before placements existed)."""
        return self.registry.read_config(job_id).placement

    def launch(self, job_id: str, resume: bool) -> None:
        """Start training job `job_id` on the served weights in a thread; UserError when there are none."""
        from llama_space.training.shared import SharedBase

        if self.manager is None:
            raise UserError(NO_SERVED_MODEL.format(job_id=job_id))
        model, tokenizer = self.manager.training_copy()
        base = SharedBase(model, tokenizer)
        # Handed over in a list the thread empties: the thread's target keeps its arguments until it has
        # returned, and the weights' copy, LoRA and optimizer state must be freed inside it.
        thread = self.launcher.start_thread(job_id, partial(self._run, job_id, resume, [base]),
                                            placement="shared")
        self._stops[job_id] = (thread, base.stop)

    def _run(self, job_id: str, resume: bool, handed: list) -> None:
        """The training thread: the job process's `train.run`, with chat bounded beside it; never raises."""
        from llama_space.training import shared, train

        base = handed.pop()
        job_dir = self.registry.job_dir(job_id)
        bound = chat_token_bound(self.registry.read_config(job_id).plan or {})
        try:
            device = base.model.device.type
            share = (shared.yield_cpu_to_chat() if device == "cpu" else
                     shared.yield_gpu_to_chat(base.model) if device == "cuda" else nullcontext())
            with shared.ThreadLog(job_dir, threading.get_ident()), share:
                self.manager.bound_chat_tokens(bound)
                train.run(job_dir, resume, base)
        except BaseException as exc:  # the app must outlive any failure of its training thread
            log.exception("shared training job %s could not run", job_id)
            message = str(exc) if isinstance(exc, UserError) else train.failure_message(exc)
            jobfiles.update_status(job_dir, state="failed", error=message, eta_seconds=None)
        finally:
            self.manager.bound_chat_tokens(None)
            del base
            self._free_memory()
            self._stops.pop(job_id, None)

    @staticmethod
    def _free_memory() -> None:
        """Give the job's activations, gradients and optimizer state back (to chat on CUDA)."""
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def stop_all(self, timeout: float) -> None:
        """Ask every shared job to checkpoint and stop, and wait up to `timeout` seconds for each."""
        running = list(self._stops.values())
        for _thread, stop in running:
            stop.set()
        for thread, _stop in running:
            thread.join(timeout)

    def resume_interrupted(self, resume) -> None:
        """At start-up: `resume` the newest shared job that an app's end interrupted, if it trains this model."""
        model = self.registry.settings.model
        for status in self.registry.list_jobs():
            if status.get("placement") != "shared" or status.get("state") != "interrupted":
                continue
            if self.registry.read_config(status["job_id"]).model != model:
                log.info("shared job %s trains another base model; resume it by hand", status["job_id"])
                continue
            log.info("resuming shared job %s from its last checkpoint", status["job_id"])
            try:
                resume(status["job_id"])
            except UserError as exc:
                log.warning("could not resume shared job %s: %s", status["job_id"], exc)
            return
