"""Choosing the next token for one sequence of a batch, with that request's own sampling parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_space.inference.params import GenerationParams

if TYPE_CHECKING:
    import torch


class RowSampler:
    """Greedy or sampled choice with `params`, applied as `generate` applies them to one sequence.

    Order as in transformers: repetition penalty, then temperature, top-k and top-p. A seeded request
    draws from its own generator, so its reply does not depend on what it is batched with.
    """

    def __init__(self, params: GenerationParams, device) -> None:
        import torch
        from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                                  TopPLogitsWarper)

        self.greedy = params.greedy
        self.penalty = (RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
                        if params.repetition_penalty != 1.0 else None)
        self.warpers = []
        self.generator = None
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                self.warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(params.top_p))
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed % 2**64)

    def choose(self, logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """The next token id (a 0-d tensor on the logits' device, so a batch syncs with the host once)
        given this row's `logits` [vocab] and its `tokens` so far (prompt included)."""
        import torch

        scores = logits.float().unsqueeze(0)
        if self.penalty is not None:
            scores = self.penalty(torch.tensor([tokens], device=scores.device), scores)
        if self.greedy:
            return scores[0].argmax()
        for warper in self.warpers:
            scores = warper(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0, 0]


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end a reply: the model's generation config's and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
