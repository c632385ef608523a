"""The arithmetic of an evaluation: batching rows by padded size, the loss over the trained tokens, each sequence's
log-probability (for preference pairs), perplexity."""

from __future__ import annotations

import math
from collections.abc import Iterator

from llama_space.data.tokenize import IGNORE_INDEX
from llama_space.inference import prefill

# Padded tokens per forward pass, which is how long one pass keeps chat waiting: no more than one prefill chunk
# of a joining chat request does (measured: about 0.5 s a pass for the embedded model on 2 CPU cores).
BATCH_TOKENS = prefill.PREFILL_CHUNK
BATCH_ROWS = 8


def batches(examples: list[dict], max_tokens: int = BATCH_TOKENS, max_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Consecutive groups of examples whose padded size stays within `max_tokens` (one row may exceed it alone)."""
    group: list[dict] = []
    for example in examples:
        longest = max([len(e["input_ids"]) for e in group] + [len(example["input_ids"])])
        if group and (len(group) == max_rows or longest * (len(group) + 1) > max_tokens):
            yield group
            group = []
        group.append(example)
    if group:
        yield group


def padded(group: list[dict], pad_id: int):
    """(input ids, labels, attention mask) of `group`, right-padded to its longest example."""
    import torch

    width = max(len(e["input_ids"]) for e in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    labels = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for row, example in enumerate(group):
        n = len(example["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = (torch.tensor(example["input_ids"]),
                                                        torch.tensor(example["labels"]), 1)
    return ids, labels, mask


def token_nll(model, group: list[dict], pad_id: int, adapter_names: list[str] | None = None):
    """(cross-entropy of each next token [rows, width - 1], 0 where unlabelled; the shifted labels) of `group`."""
    import torch

    ids, labels, mask = padded(group, pad_id)
    kwargs = {"adapter_names": adapter_names} if adapter_names else {}
    with torch.inference_mode():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs).logits
        # Token t predicts token t + 1, as in the Trainer's causal-LM loss.
        shifted = labels[:, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted,
                                                ignore_index=IGNORE_INDEX, reduction="none")
    return nll, shifted


def masked_nll(model, group: list[dict], pad_id: int, adapter_names: list[str] | None = None) -> tuple[float, int]:
    """(summed cross-entropy, tokens counted) over the non-IGNORE_INDEX labels of `group`, right-padded."""
    nll, shifted = token_nll(model, group, pad_id, adapter_names)
    return float(nll.sum()), int((shifted != IGNORE_INDEX).sum())


def sequence_logps(model, group: list[dict], pad_id: int, adapter_names: list[str] | None = None) -> list[float]:
    """Each example's summed log-probability of its labelled tokens (the reply given the prompt)."""
    nll, _ = token_nll(model, group, pad_id, adapter_names)
    return (-nll.sum(dim=1)).tolist()


def pair_examples(pair: dict) -> list[dict]:
    """The chosen and the rejected sequence of a tokenized pair, the prompt masked."""
    prompt = pair["prompt_ids"]
    return [{"input_ids": prompt + pair[side], "labels": [IGNORE_INDEX] * len(prompt) + pair[side]}
            for side in ("chosen_ids", "rejected_ids")]


def perplexity(loss: float | None) -> float | None:
    """exp(loss), None where it does not exist or overflows."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None
