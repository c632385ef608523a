"""Cross-entropy over the trained tokens in chunks, so the (tokens x vocabulary) logits never exist at once.

For Llama-3.1-8B a micro-batch of 4 x 384 tokens has 1536 x 128,256 logits: 0.79 GB in fp32, and as much again
for their log-softmax and gradient. Here the LM head runs on one chunk of trained positions at a time; each
chunk's logits are freed after its loss is taken and recomputed in the backward pass (activation checkpointing
of the head alone), so one chunk's logits are alive at any moment. The price is a second LM-head matmul over
the trained tokens (about 6% more compute for an 8B model, more for tiny ones whose head dominates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Logit elements per chunk: 128 MiB in fp32, 261 tokens of Llama 3's 128,256-token vocabulary. Fewer logits than
# this are taken in one go, without recomputation.
LOGITS_BUDGET = 2**25
# Architectures whose forward computes logits as exactly lm_head(last hidden state): no logit scaling or
# soft-capping, which the chunks would skip. Other models keep the loss on the forward's own logits.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def chunk_tokens(vocab_size: int, budget: int = LOGITS_BUDGET) -> int:
    """Tokens per chunk so that one chunk's logits stay within `budget` elements."""
    return max(1, budget // vocab_size)


def _chunk_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of `targets` (N,) under the fp32 logits of head(hidden (N, H))."""
    import torch

    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def token_nll_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                  budget: int = LOGITS_BUDGET) -> torch.Tensor:
    """Sum over the N rows of hidden (N, H) of -log softmax(head(hidden))[target], targets (N,) all trained.

    Equal to cross_entropy(head(hidden).float(), targets, reduction="sum") up to fp32 summation order; beyond
    `budget` logit elements it is taken chunk by chunk and each chunk's logits are recomputed in backward.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    size = chunk_tokens(vocab_size, budget)
    if hidden.shape[0] <= size:
        return _chunk_nll(head, hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], size):
        # Non-reentrant checkpointing keeps only the chunk's inputs (views of `hidden`) for backward, replays
        # the RNG state (LoRA dropout on a trained head) and the autocast state of the forward.
        total = total + checkpoint(_chunk_nll, head, hidden[start:start + size], targets[start:start + size],
                                   use_reentrant=False)
    return total
