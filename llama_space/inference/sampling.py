"""Choosing the next token for one sequence of a batch, with that request's own sampling parameters."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llama_space.errors import UserError
from llama_space.inference.generation_params import GenerationParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INVALID_TOKEN = -1  # RowSampler.choose's answer when the model's scores are NaN/inf
INVALID_SCORES = ("The model produced invalid probabilities (NaN/inf) for this request; try other sampling "
                  "settings (a lower temperature, top_p or repetition_penalty) or another adapter.")


def penalty_processors(params: GenerationParams, prompt_length: int | None = None) -> list:
    """The logits processors for OpenAI's penalties and logit_bias ([] when `params` sets none), for
    `generate(logits_processor=...)`, which runs them after its repetition penalty and before the warpers."""
    return [OpenAIPenalties(params, prompt_length)] if params.penalizes else []


class OpenAIPenalties:
    """OpenAI's frequency and presence penalties over the tokens generated so far (not the prompt, as in
    vLLM), then its logit_bias added to the scores; a logits processor as `generate` calls them."""

    def __init__(self, params: GenerationParams, prompt_length: int | None = None) -> None:
        """`prompt_length` None: the ids of the first call are the prompt (so they are in both decoders)."""
        self.frequency, self.presence = params.frequency_penalty, params.presence_penalty
        self.bias = params.logit_bias
        self.prompt_length = prompt_length
        self._bias: tuple | None = None  # (ids, values) on the scores' device, made at the first call

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """`scores` [rows, vocab] adjusted for `input_ids` [rows, length] (prompt first)."""
        import torch

        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] and (self.frequency or self.presence):
            ones = torch.ones_like(generated, dtype=scores.dtype)
            counts = torch.zeros_like(scores).scatter_add_(1, generated, ones)  # [rows, vocab]
            scores = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        if self.bias:
            if self._bias is None:
                self._bias = (torch.tensor(list(self.bias), device=scores.device),
                              torch.tensor(list(self.bias.values()), dtype=scores.dtype, device=scores.device))
            ids, values = self._bias
            scores = scores.index_add(1, ids, values.expand(scores.shape[0], -1))
        return scores


class RowSampler:
    """Greedy or sampled choice with `params`, applied as `generate` applies them to one sequence.

    Order as in transformers: repetition penalty, OpenAI's penalties and logit bias (our processors come
    after generate's own), then temperature, top-k and top-p. A seeded request draws from its own
    generator, so its reply does not depend on what it is batched with. That generator is made on the device
    of the first logits it is handed (a model spread over GPUs gives its logits on the last one).
    """

    def __init__(self, params: GenerationParams) -> None:
        from transformers import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.greedy = params.greedy
        self.penalties = [RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
                          ] if params.repetition_penalty != 1.0 else []
        self.penalties += penalty_processors(params)  # the first choice is made after the whole prompt
        self.warpers = []
        self.seed = params.seed
        self.generator: torch.Generator | None = None  # made at the first sampled choice
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                self.warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(params.top_p))

    def _generator_on(self, device) -> torch.Generator:
        """This row's generator, made on `device` (seeded with the request's seed, or from the OS) at the first call."""
        import torch

        if self.generator is None:
            self.generator = torch.Generator(device=device)
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed % 2**64)
        return self.generator

    def choose(self, logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """The next token id (a 0-d tensor on the logits' device, so a batch syncs with the host once)
        given this row's `logits` [vocab] and its `tokens` so far (prompt included); INVALID_TOKEN when
        the scores hold no distribution to choose from."""
        import torch

        scores = logits.float().unsqueeze(0)
        if self.penalties:
            ids = torch.tensor([tokens], device=scores.device)
            for penalty in self.penalties:
                scores = penalty(ids, scores)
        for warper in self.warpers:
            scores = warper(None, scores)
        # NaN or +inf anywhere, or every token filtered out (all -inf). Flagged on the device: multinomial
        # would raise on the CPU and assert on CUDA, failing every row in the batch with this one.
        invalid = ~torch.isfinite(scores.max())
        if self.greedy:
            token = scores[0].argmax()
        else:
            probs = torch.softmax(scores.masked_fill(invalid, 0.0), dim=-1)
            token = torch.multinomial(probs, 1, generator=self._generator_on(probs.device))[0, 0]
        return torch.where(invalid, INVALID_TOKEN, token)


class SampledChoice:
    """A logits processor that makes `generate`'s greedy search sample: `sampler` draws each row's token with
    its own generator, and that token is left the only one with a finite score.

    `generate`'s own sampling draws from torch's global generator, which a training job in this process uses
    for LoRA dropout and for replaying it under gradient checkpointing: chat must never move it.
    """

    def __init__(self, sampler: RowSampler) -> None:
        self.sampler = sampler

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """`scores` [rows, vocab] with -inf everywhere but each row's chosen token; UserError for NaN/inf scores."""
        import torch

        tokens = torch.stack([self.sampler.choose(row, ids.tolist() if self.sampler.penalties else [])
                              for row, ids in zip(scores, input_ids)])
        if bool((tokens == INVALID_TOKEN).any()):
            raise UserError(INVALID_SCORES)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens.unsqueeze(1), 0.0)


def choose_rows(samplers: list[RowSampler], logits: torch.Tensor, tokens: list[list[int]]) -> list[int | Exception]:
    """Each row's next token from `logits` [rows, vocab] (one host sync for all), or the error that row
    fails with: its scores were NaN/inf, or its sampler raised. One row's error leaves the others' choice."""
    import torch

    errors: dict[int, Exception] = {}
    chosen = []
    for i, (sampler, row_logits, row_tokens) in enumerate(zip(samplers, logits, tokens)):
        try:
            chosen.append(sampler.choose(row_logits, row_tokens))
        except Exception as exc:  # this row fails; the others go on
            log.exception("Sampling failed for one row of the batch")
            errors[i] = exc
            chosen.append(torch.tensor(INVALID_TOKEN, device=row_logits.device))
    picks = torch.stack(chosen).tolist()
    return [errors.get(i, UserError(INVALID_SCORES)) if token == INVALID_TOKEN else token
            for i, token in enumerate(picks)]


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end a reply: the model's generation config's and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
