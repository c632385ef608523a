"""Chunked prefill: a request joining the batch feeds its prompt through the model a chunk per engine round.

Between two chunks the engine decodes a step of the rows already replying, so a long prompt delays their
next token by one chunk's forward pass instead of its whole prefill (bench/concurrency.py measures it).
The joining request keeps its keys and values in a DynamicCache of its own (one row, no padding) until
its whole prompt is in; then it samples its first token and joins the shared batch cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_space.inference.sampling import RowSampler, choose_rows

if TYPE_CHECKING:
    from llama_space.inference.stream import GenerationStream

# Prompt tokens prefilled per engine round: bounds how long a joining prompt holds up the running rows'
# next token to one such forward pass, yet large enough to keep a GPU's prefill compute-bound.
PREFILL_CHUNK = 256


class Prefill:
    """A request on its way into the batch: its prompt's cache so far, its sampler and, at the end, its first token."""

    def __init__(self, stream: GenerationStream, adapter: str, model) -> None:
        from transformers.cache_utils import DynamicCache

        self.stream = stream
        self.adapter = adapter  # PEFT adapter name ("__base__" for the base model)
        self.sampler = RowSampler(stream.params)
        self.cache = DynamicCache(config=model.config)
        self.done = 0  # prompt tokens in the cache so far
        self.first: int | None = None  # the reply's first token, once the whole prompt is in

    @property
    def length(self) -> int:
        """Prompt tokens."""
        return len(self.stream.input_ids)

    def feed(self, model, is_peft: bool, budget: int) -> int:
        """Run the next `budget` prompt tokens (or the rest) through `model`; how many it ran.

        Once the whole prompt is in, `first` holds the first token; UserError if the scores for it are NaN/inf.
        """
        import torch

        start, end = self.done, min(self.done + budget, self.length)
        ids = torch.tensor([self.stream.input_ids[start:end]], device=model.device)
        # The mask covers the cached tokens and the new ones ([1, end]); positions go on where the cache ends.
        mask = torch.ones((1, end), dtype=torch.long, device=model.device)
        positions = torch.arange(start, end, device=model.device).unsqueeze(0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True,
                    logits_to_keep=1, **({"adapter_names": [self.adapter]} if is_peft else {}))
        self.done = end
        if end == self.length:
            first = choose_rows([self.sampler], out.logits[:, -1], [self.stream.input_ids])[0]
            if isinstance(first, Exception):
                raise first
            self.first = first
        return end - start
