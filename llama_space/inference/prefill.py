"""Prefill: requests joining the batch feed their prompts through the model, several short ones in one forward
pass, a long one a chunk per engine round.

A round spends at most PREFILL_CHUNK prompt positions (padding included): either several waiting prompts,
left-padded to the longest with the padding masked out, in one forward pass, or the next chunk of one prompt
longer than that. Between two rounds the engine decodes a step of the rows already replying, so a long prompt
delays their next token by one chunk's forward pass instead of its whole prefill (bench/concurrency.py
measures it). The joining requests keep their keys and values in a BatchCache of their own until their whole
prompts are in; then they choose their first tokens together and join the shared batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llama_space.errors import UserError
from llama_space.inference.batch_cache import BatchCache
from llama_space.inference.sampling import BatchSampler, choose_rows

if TYPE_CHECKING:
    import torch

    from llama_space.inference.stream import GenerationStream

log = logging.getLogger(__name__)

# Prompt positions prefilled per engine round: bounds how long joining prompts hold up the running rows' next
# token to one such forward pass, yet large enough to keep a GPU's prefill compute-bound.
PREFILL_CHUNK = 256


def fits(prompts: list[list[int]], budget: int) -> bool:
    """Whether `prompts`, left-padded to the longest, fit in one round of `budget` positions together (a lone
    prompt always does: it is chunked)."""
    return len(prompts) == 1 or len(prompts) * max(map(len, prompts)) <= budget


class Prefill:
    """Requests on their way into the batch: their prompts' cache so far and, at the end, their samplers."""

    def __init__(self, streams: list[GenerationStream], adapters: list[str], model, pad_id: int | None) -> None:
        import torch
        from transformers.cache_utils import DynamicCache

        self.streams = streams
        self.adapters = adapters  # PEFT adapter names ("__base__" for the base model)
        width = max(len(stream.input_ids) for stream in streams)
        # [rows, width], each prompt at the right end; padding takes any id (it is masked out).
        self.ids = torch.full((len(streams), width), pad_id or 0, dtype=torch.long, device=model.device)
        self.mask = torch.zeros_like(self.ids)
        for i, stream in enumerate(streams):
            self.ids[i, width - len(stream.input_ids):] = torch.tensor(stream.input_ids)
            self.mask[i, width - len(stream.input_ids):] = 1
        self.cache = BatchCache()
        self.cache.cache = DynamicCache(config=model.config)
        self.done = 0  # columns of `ids` in the cache so far
        self.sampler: BatchSampler | None = None  # the rows that joined, once the whole prompts are in

    @property
    def width(self) -> int:
        """Prompt positions per row, padding included."""
        return self.ids.shape[1]

    def feed(self, model, is_peft: bool, budget: int) -> torch.Tensor | None:
        """Run the next columns of the prompts through `model`, at most `budget` positions in all; the last
        position's logits [rows, vocab] once the whole prompts are in, else None."""
        start = self.done
        end = min(self.width, start + max(1, budget // len(self.streams)))
        # The mask covers the cached columns and the new ones; positions count each row's real tokens only.
        mask = self.mask[:, :end]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, start:]
        out = model(input_ids=self.ids[:, start:end], attention_mask=mask, position_ids=positions,
                    cache=self.cache.cache, use_cache=True, logits_to_keep=1,
                    **({"adapter_names": self.adapters} if is_peft else {}))
        self.done = end
        if end < self.width:
            return None
        self.cache.mask = self.mask
        return out.logits[:, -1]

    def first_tokens(self, logits: torch.Tensor) -> tuple[list[int], list[tuple[GenerationStream, Exception]]]:
        """Each request's first token from `logits` [rows, vocab] with a sampler of its own; (the tokens of the
        requests that join, in order, with `streams`, `adapters`, `cache` and `sampler` cut to them; the
        requests that fail with their error: a sampler that cannot be built, NaN/inf scores)."""
        self.sampler, built, failed = BatchSampler(), [], []
        for i, stream in enumerate(self.streams):
            try:
                self.sampler.extend(BatchSampler.for_row(stream.params, stream.input_ids, logits.shape[-1],
                                                         logits.device))
                built.append(i)
            except Exception as exc:  # this request fails; the others go on
                if not isinstance(exc, UserError):
                    log.exception("Building a joining request's sampler failed")
                failed.append((stream, exc))
        picks = choose_rows(self.sampler, logits[built]) if built else []
        joined = [j for j, pick in enumerate(picks) if not isinstance(pick, Exception)]
        failed += [(self.streams[built[j]], pick) for j, pick in enumerate(picks) if isinstance(pick, Exception)]
        self.sampler.keep(joined)
        rows = [built[j] for j in joined]
        self.cache.keep(rows)
        self.streams = [self.streams[i] for i in rows]
        self.adapters = [self.adapters[i] for i in rows]
        return [picks[j] for j in joined], failed
