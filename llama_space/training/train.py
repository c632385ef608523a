"""The training job process: `python -m llama_space.training.train --job-dir DIR [--resume]`.

Reads DIR/job.json, trains a LoRA adapter with transformers' Trainer, reports through DIR/status.json,
DIR/metrics.jsonl and its own stderr (DIR/train.log when the runner starts it), and publishes the adapter
atomically into the adapters dir. Runs unchanged under `accelerate launch` (see docs/multi_gpu.md): every rank
trains its share of each batch, rank 0 alone writes the job's files.

JobRunner writes job.json; by hand, this is enough (dataset relative to DIR or absolute):
    {"model": "", "adapter": "my-adapter", "dataset": "data.jsonl", "adapters_dir": "/app/adapters",
     "cache_dir": "/app/data/cache", "params": {"max_steps": 60, "learning_rate": 0.002}}
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.jobs.processes import process_alive
from llama_space.training import checkpoints
from llama_space.training.job_config import TrainingJobConfig
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from llama_space.training.shared import SharedBase

log = logging.getLogger("llama_space.training")

MAIN_REPORT_GRACE = 10  # seconds a failed rank > 0 waits for rank 0 to record the failure before exiting
OOM_HELP = ("Out of memory{where}. Lower batch_size or max_length, or set gradient_checkpointing to on, "
            "then start the job again.")


def failure_message(exc: BaseException, step: int | None = None) -> str:
    """What to tell the user about an exception that ended training."""
    import torch

    where = f" at step {step}" if step else ""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return OOM_HELP.format(where=where)
    if isinstance(exc, OSError) and exc.strerror:  # the OS's reason, without the file names it may carry
        return f"Training failed{where}: {exc.strerror}. Fix that, then resume the job (details in the log)."
    # Any other exception's text can hold paths or library internals: the log below has it in full.
    return f"Training failed{where} ({type(exc).__name__}); the job's log shows what went wrong."


def check_startable(job_dir: Path, resume: bool) -> None:
    """Refuse to start a job that is finished, running in another process, or stopped without --resume."""
    status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
    state, pid = status.get("state", "queued"), status.get("pid")
    if state in ("completed", "cancelled"):
        raise UserError(f"job {job_dir.name} is already {state}")
    if state == "running" and pid and pid != os.getpid() and process_alive(pid, job_dir):
        raise UserError(f"job {job_dir.name} is already running (pid {pid})")
    if state in ("running", "failed", "interrupted") and not resume:
        raise UserError(f"job {job_dir.name} is {state}; pass --resume to continue from its last checkpoint")


def is_main_process() -> bool:
    """Rank 0 reports and publishes; `accelerate launch` sets RANK for each process, a plain run has none."""
    return os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    """How many processes train this job together (WORLD_SIZE from `accelerate launch`; 1 for a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_ranks() -> Callable[[bool], bool]:
    """Join the other ranks now and return how they agree on a stop: a flag OR-ed over all ranks.

    The process group is set up here rather than when the Trainer's arguments are built (they reuse it), so
    that ranks can agree on a cancel before loading the model. A single process gets the flag back as is,
    without importing torch.
    """
    if world_size() < 2:
        return bool
    from datetime import timedelta
    from functools import partial

    import torch
    from accelerate import PartialState
    from transformers import TrainingArguments

    from llama_space.training.trainer import any_rank

    state = PartialState(cpu=not torch.cuda.is_available(),
                         timeout=timedelta(seconds=TrainingArguments.ddp_timeout))
    return partial(any_rank, device=state.device)


def leave_ranks(finished: bool) -> None:
    """Leave the other ranks before this process exits: wait for them (if this rank finished its part), then destroy
    the process group while the interpreter is still whole. A no-op for a single process.

    Gloo's worker threads free a collective's tensors after the caller has moved on, and freeing one that Python
    created takes the GIL: a thread that asks for it while the interpreter shuts down aborts the process (SIGABRT,
    "terminate called without an active exception"), and torchrun then reports the whole job failed and stops the
    other ranks. A rank other than 0 would exit within a millisecond of its last all-reduce; waiting at a barrier
    (which carries no tensor) lets those frees run first. A failed rank skips the barrier, which the others may never
    reach: torchrun stops the job anyway.
    """
    if world_size() < 2 or not finished:
        return
    import torch.distributed as dist

    if dist.is_initialized():  # not when the job ended before the ranks joined
        dist.barrier()
        dist.destroy_process_group()


def train_job(job_dir: Path, base: SharedBase | None = None) -> dict:
    """Train and publish; return the final status fields. Raises on failure.

    Under `accelerate launch` every rank runs this. The ranks take each stop decision together: a rank that
    skipped a collective the others enter (a training step, an evaluation) would leave them waiting. A shared
    job (training.shared) passes the served weights as `base` instead of having the base loaded, and may be
    stopped (checkpointed, to resume) by its stop event.
    """
    config = TrainingJobConfig.read(job_dir)
    params = config.params
    adapters_dir, name = Path(config.adapters_dir), config.adapter
    if adapters.adapter_path(adapters_dir, name).exists():
        raise UserError(adapters.exists_message(name))
    # Read before training: the parent may be deleted while this job runs.
    lineage = adapters.lineage_of(adapters_dir, params.from_adapter, config.base_model) if params.from_adapter else []
    checkpoints_dir = job_dir / jobfiles.CHECKPOINTS_DIR
    any_rank = join_ranks()
    trainer, progress = None, None
    # Loading a large model takes a while: skip it if cancelled.
    if not any_rank((job_dir / jobfiles.CANCEL_FILE).exists()):
        trainer, progress = prepare_trainer(job_dir, config, params, base)
        resume_from = checkpoints.latest(checkpoints_dir)
        log.info("device %s; resuming from %s", trainer.args.device, resume_from or "scratch")
        if not any_rank(progress.cancel_requested()):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if progress is None or any_rank(progress.cancelled or progress.cancel_requested()):
        if is_main_process():
            shutil.rmtree(checkpoints_dir, ignore_errors=True)
        return {"state": "cancelled", "eta_seconds": None}
    if base is not None and base.stop.is_set():  # the app is closing: its next start resumes the job
        return {"state": "interrupted", "eta_seconds": None}
    eval_loss = final_eval_loss(trainer, progress)
    # Several ranks may each hold only a shard of the weights (FSDP, ZeRO-3): all take part in gathering them.
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped) if world_size() > 1 else None
    if trainer.is_world_process_zero():
        metadata = {
            "base_model": config.base_model, "job_id": config.job_id,
            "dataset_fingerprint": config.dataset_fingerprint, "dataset_name": config.dataset_name,
            "hyperparameters": params.to_dict(), "base_quantization": params.quantization,
            "method": params.method, "system_prompt": params.system_prompt,
            "parent_adapter": params.from_adapter or None,
            "lineage": lineage,
            "train_loss": progress.final_train_loss(),
            "eval_loss": eval_loss, "steps": trainer.state.global_step,
            "train_examples": len(trainer.train_dataset), "processes": trainer.args.world_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        publish(trainer.accelerator.unwrap_model(trainer.model), job_dir, adapters_dir, name, metadata, weights)
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
    return {"state": "completed", "eta_seconds": 0, "eval_loss": eval_loss}


def prepare_trainer(job_dir: Path, config: TrainingJobConfig, params: TrainingParams, base: SharedBase | None = None):
    """Load the base model (or take the shared `base`), add LoRA, and have the job's training method read the
    data, split it and build its Trainer with our progress callback."""
    from transformers import set_seed

    from llama_space.training import lora
    from llama_space.training.methods import get_method
    from llama_space.training.progress import JobProgress

    method = get_method(params.method)
    set_seed(params.seed)
    if base is None:
        model, tokenizer = lora.load_base(config.model, Path(config.cache_dir), params.quantization)
    else:
        model, tokenizer = base.model, base.tokenizer
        model.config.use_cache = False  # the tree's own config (see lora.load_base for why)
    examples = method.build_examples(config.dataset_path(job_dir), tokenizer, params, config.max_bytes)
    train_rows, eval_rows = method.split(examples, params)
    log.info("%s: %d training / %d eval examples", method.name, len(train_rows), len(eval_rows))
    checkpointing = lora.wants_checkpointing(model, params)
    progress = JobProgress(job_dir)
    trainer = method.build_trainer(lora.add_lora(model, params, Path(config.adapters_dir)), tokenizer, params,
                                   checkpoints_dir=job_dir / jobfiles.CHECKPOINTS_DIR, train_rows=train_rows,
                                   eval_rows=eval_rows, callback=progress, activation_checkpointing=checkpointing)
    for callback in base.callbacks() if base is not None else []:
        trainer.add_callback(callback)
    return trainer, progress


def final_eval_loss(trainer, progress) -> float | None:
    """Eval loss of the final weights (reusing an evaluation of the last step); None without eval data."""
    if trainer.eval_dataset is None:
        return None
    if progress.last_eval is not None and progress.last_eval[0] == trainer.state.global_step:
        return progress.last_eval[1]
    return trainer.evaluate()["eval_loss"]


def publish(model, job_dir: Path, adapters_dir: Path, name: str, metadata: dict,
            weights: dict | None = None) -> None:
    """Save the adapter into a temp dir and rename it into adapters/<name>; never overwrite another one.

    `weights` (the model's state dict gathered from every rank) replaces the model's own weights, which are
    only this rank's shards under FSDP or ZeRO-3.
    """
    from llama_space.training import lora

    staging = adapters.staging_path(adapters_dir, name)
    lora.save_adapter(model, staging, metadata["base_model"], weights)
    adapters.write_metadata(staging, metadata)
    try:
        adapters.publish(staging, adapters_dir, name)
    except UserError as exc:  # the name was taken while we trained: keep the work in the job dir
        kept = job_dir / jobfiles.KEPT_ADAPTER_DIR
        shutil.rmtree(kept, ignore_errors=True)
        shutil.move(str(staging), str(kept))
        raise UserError(f"{exc} The trained adapter is kept in {kept}.") from exc
    log.info("published adapter %r into %s", name, adapters_dir)


def run(job_dir: Path, resume: bool, base: SharedBase | None = None) -> int:
    """Run the job in `job_dir` (in this thread, on the shared `base` when given), recording how it ended;
    exit status 0 unless it failed."""
    if not is_main_process():
        return run_other_rank(job_dir)
    check_startable(job_dir, resume)
    status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
    jobfiles.update_status(job_dir, state="running", pid=os.getpid(), error=None, eta_seconds=None,
                           started=status.get("started") or time.time(), finished=None, processes=world_size())
    try:
        outcome = train_job(job_dir, base)
    except KeyboardInterrupt:
        jobfiles.update_status(job_dir, state="interrupted", finished=time.time())
        return 130
    except BaseException as exc:  # noqa: BLE001 - any failure must end as a visible status, never silently
        step = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE).get("step")
        log.error("training failed:\n%s", traceback.format_exc())
        jobfiles.update_status(job_dir, state="failed", error=failure_message(exc, step), finished=time.time(),
                               eta_seconds=None)
        return 1
    jobfiles.update_status(job_dir, **outcome, finished=time.time())
    log.info("job %s %s", job_dir.name, outcome["state"])
    return 0


def run_other_rank(job_dir: Path) -> int:
    """Train as a rank other than 0, which records nothing in the job dir: rank 0 reports how the job ended."""
    try:
        train_job(job_dir)
    except KeyboardInterrupt:
        return 130
    except BaseException:  # noqa: BLE001 - logged here; rank 0 records the job's state
        log.error("training failed:\n%s", traceback.format_exc())
        # Once a rank exits with an error the launcher stops the others. Rank 0 usually fails the same way at
        # the same step (the logged loss is averaged over ranks), so give it time to record why first.
        deadline = time.monotonic() + MAIN_REPORT_GRACE
        while (jobfiles.read_json(job_dir / jobfiles.STATUS_FILE).get("state") in jobfiles.ACTIVE_STATES
               and time.monotonic() < deadline):
            time.sleep(0.1)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one Llama Space LoRA training job (see job.json).")
    parser.add_argument("--job-dir", required=True, type=Path, help="job directory holding job.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted job (or a failed one the app's clean-up has not yet "
                             "swept) from its last complete checkpoint")
    args = parser.parse_args(argv)
    rank = f" [rank {os.environ.get('RANK', '0')}/{world_size()}]" if world_size() > 1 else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s{rank} %(name)s: %(message)s")
    job_dir = args.job_dir.resolve()
    if not (job_dir / jobfiles.JOB_FILE).is_file():
        parser.error(f"{job_dir / jobfiles.JOB_FILE} not found")
    try:
        code = run(job_dir, args.resume)
    except UserError as exc:  # refused to start; the job's status is left as it was
        log.error("%s", exc)
        return 2
    leave_ranks(finished=code == 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
