"""The KV cache of a batch whose rows started at different times: left-padded to one length, padding masked."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers.cache_utils import DynamicCache


class BatchCache:
    """Every row's keys and values in one DynamicCache ([rows, heads, length, dim] per layer) plus the
    attention mask ([rows, length]: 1 for real tokens, 0 for the left padding that aligns the rows)."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None

    @property
    def width(self) -> int:
        """Cached positions per row, padding included."""
        return 0 if self.mask is None else self.mask.shape[1]

    def extend(self, other: BatchCache) -> None:
        """Append `other`'s rows (left-padded prompts, their mask with them) after this batch's."""
        import torch

        if self.cache is None:
            self.cache, self.mask = other.cache, other.mask
            return
        width = max(self.width, other.width)
        for ours, theirs in zip(self.cache.layers, other.cache.layers):
            ours.keys = torch.cat([_left_pad(ours.keys, width), _left_pad(theirs.keys, width)])
            ours.values = torch.cat([_left_pad(ours.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad_mask(self.mask, width), _left_pad_mask(other.mask, width)])

    def next_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask, position ids [rows, 1]) for decoding one more token in every row."""
        import torch

        positions = self.mask.sum(dim=1, keepdim=True)  # real tokens before the new one, per row
        self.mask = torch.cat([self.mask, torch.ones_like(positions)], dim=1)
        return self.mask, positions

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order) and cut the padding columns none of them needs any more."""
        import torch

        if not rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        unused = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())  # padding columns every row has
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """[rows, heads, length, dim] -> [rows, heads, width, dim] with zeros in front."""
    import torch.nn.functional as F

    return F.pad(states, (0, 0, width - states.shape[2], 0))


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    import torch.nn.functional as F

    return F.pad(mask, (width - mask.shape[1], 0))
