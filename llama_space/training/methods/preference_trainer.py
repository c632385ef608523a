"""The preference Trainers: TRL's DPOTrainer under our JobTrainer (atomic checkpoints, our progress and tracker), on
pairs data/preference.py has already tokenized; ORPO as the same Trainer with the odds-ratio loss.

The reference of DPO: for a fresh LoRA, the model with its adapter disabled (the base, or the served weights in a
shared job); for a job continued from an adapter, a frozen copy of that adapter ("ref"), as TRL makes it.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer

from llama_space.training.trainer import JobTrainer, build_job_trainer

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a continued adapter


class DPOJobTrainer(JobTrainer, DPOTrainer):
    """DPO on our tokenized pairs ({"prompt_ids", "chosen_ids", "rejected_ids"})."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # The pairs were rendered with the chat template, cut to max_length and checked per row by data/preference.py.
        return dataset


class ORPOJobTrainer(DPOJobTrainer):
    """ORPO: the chosen reply's mean token loss plus beta x -log sigmoid(log odds of chosen over rejected)."""

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        completion = inputs["completion_mask"]
        mask = completion[..., 1:].float()  # (2 x batch, length - 1): position i predicts token i + 1
        labels = inputs["input_ids"].masked_fill(completion == 0, -100)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        use_cache=False, fused_lm_head=True)
        logps = outputs.log_probs[:, -mask.size(1):] * mask
        sums, counts = logps.sum(1), mask.sum(1).clamp(min=1)
        chosen_sum, _ = sums.chunk(2)
        chosen_count, _ = counts.chunk(2)
        chosen_mean, rejected_mean = (sums / counts).chunk(2)
        nll = -chosen_sum.sum() / chosen_count.sum()
        log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
        loss = nll - self.beta * F.logsigmoid(log_odds).mean()
        metrics = self._metrics[mode]
        metrics["nll_loss"].append(nll.item())
        metrics["rewards/accuracies"].append((chosen_mean > rejected_mean).float().mean().item())
        metrics["rewards/margins"].append((self.beta * (chosen_mean - rejected_mean)).mean().item())
        metrics["log_odds_ratio"].append(log_odds.mean().item())
        return (loss, outputs) if return_outputs else loss


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of log 2."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _arguments(params, **kwargs) -> DPOConfig:
    """The job's arguments as a DPOConfig: beta, no second pass over the data for reference log-probs, and a random
    order (length grouping reads an input_ids column, which pairs do not have)."""
    kwargs["train_sampling_strategy"] = "random"
    return DPOConfig(**kwargs, beta=params.beta, max_length=params.max_length, precompute_ref_log_probs=False,
                     dataset_num_proc=None)


def build(method, model, tokenizer, params, *, checkpoints_dir, train_rows, eval_rows, callback,
          activation_checkpointing):
    """The Trainer of a preference job over the LoRA model; a fresh adapter's reference is the model with the adapter
    off (TRL's copy of an adapter that is all zeros is dropped), a continued one's its frozen copy."""
    from datasets import Dataset

    trainer_class = ORPOJobTrainer if method.name == "orpo" else DPOJobTrainer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = build_job_trainer(trainer_class, model, params, checkpoints_dir,
                                train_rows=Dataset.from_list(train_rows),
                                eval_rows=Dataset.from_list(eval_rows) if eval_rows else [],
                                callback=callback, activation_checkpointing=activation_checkpointing,
                                make_arguments=partial(_arguments, params), processing_class=tokenizer,
                                data_collator=method.collator(tokenizer))
    peft = trainer.accelerator.unwrap_model(trainer.model)
    if REFERENCE_ADAPTER in getattr(peft, "peft_config", {}) and (not params.from_adapter or method.name == "orpo"):
        peft.delete_adapter(REFERENCE_ADAPTER)
    return trainer
