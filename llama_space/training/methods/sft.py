"""Supervised fine-tuning (SFT): instruction rows rendered with the model's chat template, the loss on the
assistant tokens alone, examples packed into one row without padding.

Its Trainer is in sft_trainer.py, imported when a job builds it: this module loads nothing heavy, since the
registry (and with it TrainingParams and the memory planner) imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from llama_space.data.formats import EXPECTED
from llama_space.training.collate import packing_collator
from llama_space.training.loss import LOGITS_BUDGET, PLAIN_HEAD_MODEL_TYPES
from llama_space.training.methods.base import TrainingMethod

if TYPE_CHECKING:
    from pathlib import Path

    from peft import PeftModel
    from transformers import DataCollatorWithFlattening, PreTrainedTokenizerBase, TrainerCallback

    from llama_space.training.memory import Shape
    from llama_space.training.methods.sft_trainer import SFTTrainer
    from llama_space.training.params import TrainingParams


class SFT(TrainingMethod):
    """Learn the assistant replies of instruction data: cross-entropy on the assistant tokens, the prompt masked."""

    name: ClassVar[str] = "sft"
    description: ClassVar[str] = "supervised fine-tuning on the assistant replies, the prompts masked"
    accepts: ClassVar[str] = f"instruction data ({', '.join(EXPECTED)} rows)"

    def build_examples(self, dataset: Path, tokenizer: PreTrainedTokenizerBase, params: TrainingParams,
                       max_bytes: int) -> list[dict]:
        """{"input_ids", "labels"} per trainable row (see llama_space.data.build_examples), the job's system prompt
        given to rows without one."""
        from llama_space.data import build_examples

        return build_examples(dataset, tokenizer, params.max_length, max_bytes=max_bytes,
                              system_prompt=params.system_prompt)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithFlattening:
        """Padding-free packing (collate.packing_collator): the batch in one row, positions restarting per example."""
        return packing_collator()

    def build_trainer(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, params: TrainingParams, *,
                      checkpoints_dir: Path, train_rows: list[dict], eval_rows: list[dict],
                      callback: TrainerCallback, activation_checkpointing: bool) -> SFTTrainer:
        """A JobTrainer on packed batches whose loss projects only the labelled positions, in chunks."""
        from llama_space.training.methods.sft_trainer import SFTTrainer
        from llama_space.training.trainer import build_job_trainer

        return build_job_trainer(SFTTrainer, model, params, checkpoints_dir, train_rows=train_rows,
                                 eval_rows=eval_rows, callback=callback,
                                 activation_checkpointing=activation_checkpointing,
                                 data_collator=self.collator(tokenizer))

    def logits_budget(self, shape: Shape) -> int | None:
        """The chunked loss's budget (loss.py) on plain-head architectures; other models' loss takes all logits."""
        return LOGITS_BUDGET if shape.model_type in PLAIN_HEAD_MODEL_TYPES else None
