"""What the preference methods (DPO, ORPO) share: pairs of a chosen and a rejected reply to one prompt
(data/preference.py), batched chosen-then-rejected with padding, and the memory of two sequences per example.

Their Trainers are in preference_trainer.py (TRL's DPOTrainer under our JobTrainer), imported when a job builds one:
this module loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from llama_space.data.preference import PREFERENCE_EXPECTED
from llama_space.training.methods.base import StepMemory, TrainingMethod

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

    from llama_space.training.memory import Shape
    from llama_space.training.params import TrainingParams


class PreferenceMethod(TrainingMethod):
    """A method that learns from preference pairs: two sequences per example through the model each step."""

    accepts: ClassVar[str] = f"preference pairs ({'; '.join(PREFERENCE_EXPECTED)} rows)"
    sequences_per_row: ClassVar[int] = 2
    uses_reference: ClassVar[bool] = True  # whether a step also runs the reference (no grads)

    def build_examples(self, dataset: Path, tokenizer: PreTrainedTokenizerBase, params: TrainingParams,
                       max_bytes: int) -> list[dict]:
        """{"prompt_ids", "chosen_ids", "rejected_ids"} per usable pair (see data.build_preference_examples)."""
        from llama_space.data import build_preference_examples

        return build_preference_examples(dataset, tokenizer, params.max_length, max_bytes, params.system_prompt)

    def collator(self, tokenizer: PreTrainedTokenizerBase):
        """TRL's preference collator: chosen rows then rejected rows, right-padded, with their completion masks."""
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return DataCollatorForPreference(pad_token_id=pad)

    def logits_budget(self, shape: Shape) -> int | None:
        """TRL's fused LM head takes the reply positions in tiles it sizes itself: counted as all of them."""
        return None

    def memory_terms(self, step: StepMemory) -> dict[str, int]:
        """The reference's forward without grads (one layer's transient activations at a time), and
        a continued adapter's frozen copy (the reference when training goes on from an adapter)."""
        if not self.uses_reference:
            return {}
        shape = step.shape
        per_token = (4 * shape.hidden + 3 * shape.intermediate) * step.act + 4
        terms = {"reference_forward": step.tokens * per_token}
        if step.params.from_adapter:
            from llama_space.training.memory import lora_parameters

            terms["reference_adapter"] = 4 * lora_parameters(shape, step.params)
        return terms

    def build_trainer(self, model, tokenizer, params, *, checkpoints_dir, train_rows, eval_rows, callback,
                      activation_checkpointing):
        """A JobTrainer over TRL's DPOTrainer on our tokenized pairs (see preference_trainer.build)."""
        from llama_space.training.methods.preference_trainer import build

        return build(self, model, tokenizer, params, checkpoints_dir=checkpoints_dir, train_rows=train_rows,
                     eval_rows=eval_rows, callback=callback, activation_checkpointing=activation_checkpointing)


class DPO(PreferenceMethod):
    """Direct preference optimisation against a frozen reference: the base (adapter off) or the adapter continued."""

    name: ClassVar[str] = "dpo"
    description: ClassVar[str] = ("direct preference optimisation: raise the chosen reply over the rejected one "
                                  "relative to a frozen reference (beta: how far from it)")


class ORPO(PreferenceMethod):
    """Odds-ratio preference optimisation: the chosen reply's loss plus an odds-ratio term, no reference model."""

    name: ClassVar[str] = "orpo"
    description: ClassVar[str] = ("odds-ratio preference optimisation: learn the chosen reply and push its odds "
                                  "over the rejected one (beta: the odds term's weight), no reference model")
    uses_reference: ClassVar[bool] = False
