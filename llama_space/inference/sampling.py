"""Choosing the next token for every row of a batch at once, each row with its own request's sampling parameters.

`BatchSampler` holds the rows' parameters as tensors and their histories on the device, and chooses all their
tokens in a few tensor operations: no Python loop over rows and no sort of the vocabulary per step. The
serial decoder (`generate`) samples through the same class as a batch of one (`SampledChoice`), so a seeded
request gives the same reply alone or batched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llama_space.errors import UserError
from llama_space.inference import nucleus
from llama_space.inference.generation_params import GenerationParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INVALID_TOKEN = -1  # BatchSampler.choose's answer for a row whose scores are NaN/inf or filter out every token
INVALID_SCORES = ("The model produced invalid probabilities (NaN/inf) for this request; try other sampling "
                  "settings (a lower temperature, top_p or repetition_penalty) or another adapter.")
UNIFORM_BLOCK = 64  # uniforms a row draws from its own generator at a time (one draw call per row per block)
# Columns of BatchSampler.table, one row per request.
GREEDY, TEMPERATURE, TOP_K, TOP_P, REPETITION, FREQUENCY, PRESENCE = range(7)


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


class BatchSampler:
    """The sampling state of a batch's rows, in batch order, on the device of their logits.

    Per row: its parameters (`table` [rows, 7], filters off for greedy rows), its history for the penalties
    (`seen` [rows, vocab]: prompt and reply tokens, for the repetition penalty; `counts` [rows, vocab]: reply
    tokens, for OpenAI's penalties; `bias` [rows, vocab]: logit_bias; each None while no row needs it), and its
    randomness: a generator of its own (seeded with the request's seed, or from the OS; never torch's global
    one) from which it draws UNIFORM_BLOCK uniforms at a time, one used per choice. A row's draws so depend
    only on its own choices, not on what it is batched with.
    """

    def __init__(self) -> None:
        """An empty batch; `for_row` makes one row, `extend` joins batches."""
        self.params: list[GenerationParams] = []
        self.generators: list[torch.Generator | None] = []
        self.table = self.seen = self.counts = self.bias = self.uniforms = None
        self.block_start: list[int] = []  # the step at which each row's current block of uniforms was drawn
        self.step = 0  # choices made by this batch so far
        self._block_start = None  # block_start on the device

    def __len__(self) -> int:
        return len(self.params)

    @classmethod
    def for_row(cls, params: GenerationParams, prompt: list[int], vocab: int, device) -> BatchSampler:
        """One row for a request with `params` whose prompt is `prompt`, choosing among `vocab` tokens on
        `device`."""
        import torch

        row = cls()
        row.params, row.block_start = [params], [0]
        if params.repetition_penalty != 1.0:
            ids = torch.tensor(prompt, dtype=torch.long, device=device)
            row.seen = torch.zeros((1, vocab), dtype=torch.bool, device=device)
            row.seen[0, ids[ids < vocab]] = True  # ids past the logits (added tokens) cannot be chosen anyway
        if params.frequency_penalty or params.presence_penalty:
            row.counts = torch.zeros((1, vocab), device=device)
        if params.logit_bias:  # its ids were checked against the model's vocabulary when the request came
            row.bias = torch.zeros((1, vocab), device=device)
            row.bias[0, list(params.logit_bias)] = torch.tensor(list(params.logit_bias.values()), device=device)
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=device)
            if params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(params.seed % 2**64)
        row.generators = [generator]
        row.uniforms = torch.zeros((1, UNIFORM_BLOCK), device=device)
        row._draw(0)
        row._refresh()
        return row

    def extend(self, other: BatchSampler) -> None:
        """Append `other`'s rows (their histories and the uniforms they have left come along)."""
        import torch

        if not self.params:
            self.__dict__.update(other.__dict__)
            return
        for name in ("seen", "counts", "bias"):
            ours, theirs = getattr(self, name), getattr(other, name)
            if ours is not None or theirs is not None:  # a batch without one holds zeros for it
                ours = torch.zeros_like(theirs[:1]).expand(len(self), -1) if ours is None else ours
                theirs = torch.zeros_like(ours[:1]).expand(len(other), -1) if theirs is None else theirs
                setattr(self, name, torch.cat([ours, theirs]))
        self.uniforms = torch.cat([self.uniforms, other.uniforms])
        # Each row keeps its place in its block of uniforms, counted in this batch's steps.
        self.block_start += [self.step - (other.step - start) for start in other.block_start]
        self.params += other.params
        self.generators += other.generators
        self._refresh()

    def select(self, rows: list[int]) -> BatchSampler:
        """A batch of `rows` (in that order) of this one, sharing their generators."""
        import torch

        chosen = BatchSampler()
        index = torch.tensor(rows, dtype=torch.long, device=self.uniforms.device)
        for name in ("seen", "counts", "bias", "uniforms"):
            value = getattr(self, name)
            setattr(chosen, name, None if value is None or not rows else value[index])
        chosen.params = [self.params[i] for i in rows]
        chosen.generators = [self.generators[i] for i in rows]
        chosen.block_start = [self.block_start[i] for i in rows]
        chosen.step = self.step
        if rows:
            chosen._refresh()
        return chosen

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`, in that order."""
        self.__dict__.update(self.select(rows).__dict__)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token from `logits` [rows, vocab] (on their device, no host sync), INVALID_TOKEN for
        a row with NaN/inf scores; the tokens go into the rows' histories.

        Order as in transformers: repetition penalty, OpenAI's penalties and logit bias, then (sampled rows)
        temperature, top-k and top-p; greedy rows take the highest penalized score.
        """
        import torch

        scores = self._penalized(logits.float())
        # NaN or +inf anywhere, or every token at -inf: flagged on the device, so the row fails alone.
        best, tokens = scores.max(dim=-1)  # greedy rows take the first highest score, as argmax does
        invalid = ~torch.isfinite(best)
        if self._sampled:
            tokens = torch.where(self.table[:, GREEDY] > 0, tokens, self._sample(scores))
        tokens = torch.where(invalid, INVALID_TOKEN, tokens)
        self._record(tokens)
        return tokens

    def _penalized(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` [rows, vocab] with the rows' penalties and biases (a row without one is left as it is)."""
        import torch

        if self.seen is not None:
            penalty = self.table[:, REPETITION:REPETITION + 1]
            scores = torch.where(self.seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        if self.counts is not None:
            scores = (scores - self.table[:, FREQUENCY:FREQUENCY + 1] * self.counts
                      - self.table[:, PRESENCE:PRESENCE + 1] * (self.counts > 0).to(scores.dtype))
        if self.bias is not None:
            scores = scores + self.bias
        return scores

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        """A token per row drawn from softmax(scores / temperature) after top-k and top-p (greedy rows' are moot)."""
        import torch

        temperature = self.table[:, TEMPERATURE:TEMPERATURE + 1]
        uniforms, tokens = self._uniforms(), None
        if self._unfiltered:  # rows drawing from the whole vocabulary
            scaled = scores / temperature
            weights = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values)
            tokens = nucleus.inverse_cdf(weights, uniforms).squeeze(1)
        if self._filtered:
            filtered = nucleus.sample(scores, temperature, self.table[:, TOP_K].long(), self.table[:, TOP_P],
                                      uniforms, self._widest_k, self._unbounded)
            tokens = filtered if tokens is None else torch.where(self._filters, filtered, tokens)
        return tokens

    def _uniforms(self) -> torch.Tensor:
        """Each row's uniform for this step [rows]; rows whose block is used up draw the next one first."""
        if self.step - min(self.block_start) >= UNIFORM_BLOCK:
            for i, start in enumerate(self.block_start):
                if self.step - start >= UNIFORM_BLOCK:
                    self._draw(i)
            self._refresh()
        return self.uniforms.gather(1, (self.step - self._block_start).unsqueeze(1)).squeeze(1)

    def _draw(self, i: int) -> None:
        """Row `i`'s next block of uniforms (zeros for a greedy row, which draws none)."""
        import torch

        generator = self.generators[i]
        if generator is not None:
            self.uniforms[i] = torch.rand(UNIFORM_BLOCK, generator=generator, device=generator.device)
        self.block_start[i] = self.step

    def _record(self, tokens: torch.Tensor) -> None:
        """The chosen `tokens` [rows] into the histories (an invalid row's entry is moot: it leaves)."""
        import torch

        ids = tokens.clamp(min=0).unsqueeze(1)
        if self.seen is not None:
            self.seen.scatter_(1, ids, True)
        if self.counts is not None:
            self.counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=self.counts.dtype))
        self.step += 1

    def _refresh(self) -> None:
        """The parameter table and the host's summary of it, after the rows changed."""
        import torch

        device = self.uniforms.device
        self.table = torch.tensor([[p.greedy, p.temperature or 1.0, 0 if p.greedy else p.top_k,
                                    1.0 if p.greedy else p.top_p, p.repetition_penalty, p.frequency_penalty,
                                    p.presence_penalty] for p in self.params], device=device)
        self._block_start = torch.tensor(self.block_start, dtype=torch.long, device=device)
        sampled = [p for p in self.params if not p.greedy]
        self._sampled = bool(sampled)
        filters = [not p.greedy and bool(p.top_k or p.top_p < 1) for p in self.params]
        self._filters = torch.tensor(filters, device=device)  # rows drawn among top-k/top-p candidates
        self._filtered = any(filters)
        self._unfiltered = any(p.top_k == 0 and p.top_p >= 1 for p in sampled)
        self._widest_k = max((p.top_k for p in sampled), default=0)
        self._unbounded = any(not p.top_k and p.top_p < 1 for p in sampled)


class SampledChoice:
    """A logits processor that makes `generate`'s greedy search sample: a BatchSampler of the request's rows
    chooses each token, and that token is left the only one with a finite score.

    `generate`'s own sampling draws from torch's global generator, which a training job in this process uses
    for LoRA dropout and for replaying it under gradient checkpointing: chat must never move it.
    """

    def __init__(self, params: GenerationParams) -> None:
        self.params = params
        self.sampler: BatchSampler | None = None  # made at the first call, on the scores' device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """`scores` [rows, vocab] with -inf everywhere but each row's chosen token; UserError for NaN/inf scores."""
        import torch

        if self.sampler is None:  # the first call comes right after the prompt
            self.sampler = BatchSampler()
            for prompt in input_ids.tolist():
                self.sampler.extend(BatchSampler.for_row(self.params, prompt, scores.shape[-1], scores.device))
        tokens = self.sampler.choose(scores)
        if bool((tokens == INVALID_TOKEN).any()):
            raise UserError(INVALID_SCORES)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens.unsqueeze(1), 0.0)


def choose_rows(sampler: BatchSampler, logits: torch.Tensor) -> list[int | Exception]:
    """Each row's next token from `logits` [rows, vocab] (one host sync for all), or the error that row fails
    with: its scores were NaN/inf, or choosing raised for it. Should the batch's choice raise, each row
    chooses alone, so one row's error leaves the others' choice (and `sampler` holds the rows as chosen)."""
    try:
        picks, errors = sampler.choose(logits).tolist(), {}
    except Exception:
        if len(sampler) == 1:
            raise
        log.exception("Sampling a batch of %d rows failed; each row chooses alone", len(sampler))
        picks, errors = _choose_one_by_one(sampler, logits)
    return [errors.get(i, UserError(INVALID_SCORES)) if token == INVALID_TOKEN else token
            for i, token in enumerate(picks)]


def _choose_one_by_one(sampler: BatchSampler, logits: torch.Tensor) -> tuple[list[int], dict[int, Exception]]:
    """(each row's pick, the errors of rows whose own choice raised), each row sampled as a batch of one."""
    picks, errors, parts = [], {}, [sampler.select([i]) for i in range(len(sampler))]
    for i, part in enumerate(parts):
        try:
            picks.append(int(part.choose(logits[i:i + 1])[0]))
        except Exception as exc:  # this row fails; the others go on
            log.exception("Sampling failed for one row of the batch")
            errors[i] = exc
            picks.append(INVALID_TOKEN)
    rebuilt = BatchSampler()
    for part in parts:
        rebuilt.extend(part)
    sampler.__dict__.update(rebuilt.__dict__)
    return picks, errors


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end a reply: the model's generation config's and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
