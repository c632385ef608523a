"""What a training method is: the data it trains on, its train/eval split, its batches, its Trainer and loss, and
the memory a step needs beyond the core arithmetic's.

The job process (train.py) and the job registry ask the job's method (TrainingParams.method, looked up in
methods.METHODS) for each of these; the memory arithmetic (memory.py) asks it what its loss keeps of the logits,
how many sequences an example puts through the model, and what else a step holds. Importing this module loads
nothing heavy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from llama_space.training.collate import split_examples

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

    from llama_space.training.memory import Shape
    from llama_space.training.params import TrainingParams


@dataclass(frozen=True)
class StepMemory:
    """A training step as the core memory arithmetic sizes it, for a method to size what it adds."""

    shape: Shape
    params: TrainingParams
    tokens: int  # tokens of a micro-batch at worst: batch_size x max_length x the method's sequences_per_row
    act: int  # bytes per activation element (2 under CUDA autocast, else the weights' dtype)
    lora_act: int  # bytes per activation element of a LoRA branch (its fp32 weights' dtype, bf16 under autocast)
    checkpointing: bool  # whether activation checkpointing is assumed
    cuda: bool


class TrainingMethod(ABC):
    """One way to train a LoRA adapter, from a data file to a Trainer ready to run.

    Subclasses set the class attributes and implement the abstract methods; the others have the defaults of a
    method that puts one sequence per example through the model with no model beside it.
    """

    name: ClassVar[str]  # what TrainingParams.method, the Fine-tune tab and /start_training call it
    description: ClassVar[str]  # what it does, in one line for the UI and the docs
    accepts: ClassVar[str]  # the data it trains on, in a few words
    sequences_per_row: ClassVar[int] = 1  # sequences each example puts through the model in a step

    @abstractmethod
    def build_examples(self, dataset: Path, tokenizer: PreTrainedTokenizerBase, params: TrainingParams,
                       max_bytes: int) -> list[dict]:
        """The file's training examples, tokenized and cut to params.max_length; UserError (naming the first
        problem rows) when nothing in it trains."""

    def split(self, examples: list[dict], params: TrainingParams) -> tuple[list[dict], list[dict]]:
        """(train, eval) examples: params.eval_fraction held out after a shuffle seeded with params.seed."""
        return split_examples(examples, params.eval_fraction, params.seed)

    @abstractmethod
    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        """What turns a list of examples into one batch of tensors for the model."""

    @abstractmethod
    def build_trainer(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, params: TrainingParams, *,
                      checkpoints_dir: Path, train_rows: list[dict], eval_rows: list[dict],
                      callback: TrainerCallback, activation_checkpointing: bool) -> Trainer:
        """The job's Trainer (a trainer.JobTrainer, built with trainer.build_job_trainer) over the LoRA model, with
        `callback` reporting its progress; it checkpoints into `checkpoints_dir` and evaluates on `eval_rows`
        when there are any."""

    def logits_budget(self, shape: Shape) -> int | None:
        """Most logit elements the loss holds at once; None: every position's logits of a micro-batch."""
        return None

    def memory_terms(self, step: StepMemory) -> dict[str, int]:
        """Bytes a step holds beyond the core's (LoRA state, the activations one forward saves for backward, the
        loss's logits), by part name: a reference model's no-grad forward, say. None by default."""
        return {}
