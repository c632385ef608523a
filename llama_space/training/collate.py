"""Training batches: the train/eval split and padding-free packing."""

from __future__ import annotations

import random

from llama_space.errors import UserError


def split_examples(examples: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle deterministically and hold out `eval_fraction` of the examples (at least one when > 0).

    The order depends on the number of examples and the seed alone, so row indices in place of the examples
    give the indices a job held out (service/eval_data.py rebuilds a job's eval split that way).
    """
    rows = list(examples)
    if eval_fraction <= 0:
        return rows, []
    if len(rows) < 2:
        raise UserError("An evaluation split needs at least 2 trainable examples; set eval_fraction to 0")
    random.Random(seed).shuffle(rows)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_fraction)))
    return rows[n_eval:], rows[:n_eval]


def packing_collator():
    """Concatenate a batch into one row; positions restart per example and no attention mask is sent.

    transformers derives a block-diagonal causal mask from the restarting position_ids (only when there
    is no attention mask and use_cache is off), so nothing is padded and examples never see each other.
    Each example's first label becomes -100, so no token is predicted across a boundary.
    """
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)


def real_tokens(batch: dict) -> int:
    """Tokens in a collated batch that are not padding."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
