"""transformers Trainer set up for our jobs, whatever their method: atomic checkpoints, a resumable sample order,
our progress callback and the job's tracker, ranks that stop together."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from llama_space.jobs import files as jobfiles
from llama_space.training import checkpoints, tracking
from llama_space.training.params import TrainingParams


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) instead of the global RNG.

    Trainer draws each epoch's order when the epoch starts; a job resumed mid-epoch (after the first) starts
    from a freshly seeded RNG and would see other batches than an uninterrupted run with the same seed.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """`flag` OR-ed over all data-parallel ranks, so every rank takes the same branch; a single process gets `flag`.

    A collective: under DDP every rank must call it at the same point. `device` must suit the backend (the
    rank's GPU for NCCL, the CPU for gloo).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class StopTogether(TrainerCallback):
    """Under DDP, stops every rank after the same micro-batch as soon as one rank decided to stop.

    Each rank polls the cancel file on its own and can see it a micro-batch later than another; a rank that
    stopped alone would leave the others waiting in the next gradient all-reduce. Runs after JobProgress.
    """

    def on_substep_end(self, args, state, control, **kwargs):
        control.should_training_stop = any_rank(control.should_training_stop, args.device)

    on_step_end = on_substep_end


class JobTrainer(Trainer):
    """A Trainer whose checkpoints appear all at once and whose length-grouped order survives a resume.

    Every method's Trainer is one: a subclass of it, or a class naming it before another Trainer subclass
    (`class X(JobTrainer, SomeTrainer)`); each override here calls super(), so it wraps whichever comes next.
    """

    _staging: Path | None = None

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:  # resumable: the same batches after a kill and resume
            return EpochSeededLengthSampler(sampler.lengths, sampler.batch_size, self.args.seed)
        return sampler

    def _get_output_dir(self, trial) -> str:
        # Trainer saves `<output dir>/checkpoint-<step>`; while saving, that output dir is our temp dir.
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        step = self.state.global_step
        checkpoints_dir = Path(self.args.output_dir)
        staging = checkpoints.staging_dir(checkpoints_dir, step)
        if self.args.should_save:
            checkpoints.make_empty(staging)
        self.accelerator.wait_for_everyone()  # under DDP every rank writes its RNG state into the same dir
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            checkpoints.publish(staging / f"{checkpoints.PREFIX}{step}", checkpoints_dir, step)
            shutil.rmtree(staging, ignore_errors=True)


def training_arguments(params: TrainingParams, checkpoints_dir: Path, *, evaluate: bool,
                       activation_checkpointing: bool,
                       make_arguments: Callable[..., TrainingArguments] = TrainingArguments) -> TrainingArguments:
    """A job's arguments: log every step, checkpoint (and evaluate) every save_steps. `make_arguments` builds them:
    a method's own TrainingArguments subclass, with its extra settings bound (functools.partial) where it has some."""
    cuda = torch.cuda.is_available()
    return make_arguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        learning_rate=params.learning_rate,
        lr_scheduler_type="linear",
        num_train_epochs=params.num_epochs,
        max_steps=params.max_steps or -1,
        seed=params.seed,
        # Examples of similar length share optimizer steps; the longest group runs first, so OOM shows early.
        train_sampling_strategy="group_by_length",
        bf16=cuda,
        use_cpu=not cuda,
        activation_checkpointing=activation_checkpointing,
        logging_strategy="steps",
        logging_steps=1,
        # The default filter hides NaN losses; our callback must see them to stop the run.
        logging_nan_inf_filter=False,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=params.save_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=None,  # our checkpoints.publish prunes
        # Under DDP: every LoRA weight gets a gradient each step, so skip the per-step search for unused ones
        # (Trainer would turn it on for a PEFT model, and it fails with reentrant activation checkpointing).
        ddp_find_unused_parameters=False,
        # The method's collator takes the examples as its build_examples made them; skip the signature inspection
        # of the PEFT wrapper that would drop keys its forward does not name.
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
        report_to=params.report_to,
        run_name=checkpoints_dir.parent.name,  # the job id
        project=tracking.PROJECT,
    )


def build_job_trainer(trainer_class: type[JobTrainer], model, params: TrainingParams, checkpoints_dir: Path, *,
                      train_rows: list[dict], eval_rows: list[dict], callback: TrainerCallback,
                      activation_checkpointing: bool,
                      make_arguments: Callable[..., TrainingArguments] = TrainingArguments,
                      **trainer_kwargs) -> JobTrainer:
    """A method's Trainer for one job: `trainer_class` built on the job's arguments (see training_arguments) and the method's own `trainer_kwargs` (its collator, say), with our progress callback
    instead of Trainer's log printing and the job's experiment tracker writing into <job>/logs (UserError before
    anything trains if it is not installed)."""
    job_dir = checkpoints_dir.parent
    tracking.set_up(params.report_to, job_dir)
    args = training_arguments(params, checkpoints_dir, evaluate=bool(eval_rows),
                              activation_checkpointing=activation_checkpointing, make_arguments=make_arguments)
    callbacks = [callback, StopTogether()] if args.world_size > 1 else [callback]
    trainer = trainer_class(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
                            callbacks=callbacks, **trainer_kwargs)
    trainer.remove_callback(PrinterCallback)  # our callback logs each step in a readable line
    for each in trainer.callback_handler.callbacks:
        if isinstance(each, TensorBoardCallback):  # set here, not by environment: a shared job shares the app's
            each.logging_dir = str(tracking.logs_dir(job_dir) / "tensorboard")
    if params.report_to != "none" and trainer.is_world_process_zero():
        jobfiles.update_status(job_dir, tracking=tracking.where_to_look(params.report_to, job_dir))
    return trainer
