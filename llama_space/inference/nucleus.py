"""Top-k and top-p sampling for a batch of rows without sorting the vocabulary.

One `torch.topk` over a bounded number of candidates serves every row: a row's top-k tokens are among them
(the candidate count is at least its k), and so is its top-p set whenever the candidates hold `top_p` of its
probability mass; the token is then drawn among the candidates. Only a row with no top-k whose nucleus is wider
than the candidates (a flat distribution, a high temperature) is sorted in full, alone. Llama 3's 128k vocabulary makes a full sort per row the slowest part of
a decode step's sampling on a CPU and a wasted kernel on a GPU, while its nucleus at ordinary temperatures
holds tens to hundreds of tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CANDIDATES = 1024  # tokens looked at for rows with top-p but no top-k before they fall back to a full sort


def sample(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           uniforms: torch.Tensor, widest_k: int, unbounded: bool) -> torch.Tensor:
    """Each row's token [rows] drawn from softmax(scores / temperature) over what transformers' TopK then TopP
    warpers keep, by inverse CDF at the row's uniform.

    `scores` [rows, vocab] (penalized), `temperature` [rows, 1]; `top_k` [rows] (0: no limit), `top_p` [rows]
    (1: no limit); `widest_k` is the largest k among them and `unbounded` whether some row has top-p but no
    top-k (known on the host, so the candidate count needs no sync).
    """
    import torch

    vocab = scores.shape[-1]
    count = min(vocab, max(widest_k, CANDIDATES if unbounded else 0))
    values, indices = torch.topk(scores, count, dim=-1)  # [rows, count], descending (temperature keeps the order)
    values = values / temperature
    # The full softmax's denominator, for rows without top-k; with top-k it is the candidates' own.
    total = torch.logsumexp(scores / temperature, dim=-1) if unbounded else None
    floor, reached = _floor(values, top_k, top_p, total)
    tokens = _pick(values, indices, floor, uniforms)
    if unbounded and count < vocab:
        # Rows whose nucleus is wider than the candidates: sorted in full (one host sync to find them). A row
        # with NaN/inf scores is left out: its choice is void anyway.
        short = (~(reached | ~torch.isfinite(total))).nonzero().squeeze(1)
        if len(short):
            values, indices = torch.sort(scores[short] / temperature[short], dim=-1, descending=True)
            floor = _floor(values, top_k[short], top_p[short], total[short])[0]
            tokens[short] = _pick(values, indices, floor, uniforms[short])
    return tokens


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row of `weights` [rows, n] (unnormalised, >= 0), the first position whose cumulative weight exceeds
    the row's uniform [rows] times the total: a draw in proportion to the weights (a row with NaN weights gets
    some position: its choice is void)."""
    import torch

    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Strictly below the total, so the position found has a weight of its own.
    target = torch.minimum(uniforms.unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).clamp(max=weights.shape[-1] - 1)


def _pick(values: torch.Tensor, indices: torch.Tensor, floor: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """A token per row from its descending `values` [rows, n] (token ids `indices`) that are >= `floor`."""
    import torch

    weights = torch.exp(values - values[:, :1]).masked_fill(values < floor.unsqueeze(1), 0.0)
    return indices.gather(1, inverse_cdf(weights, uniforms)).squeeze(1)


def _floor(values: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, total: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(lowest kept score, whether the decision was made within `values`) per row of `values` [rows, n], the
    highest n scores of each row in descending order; `total`: each row's logsumexp over the whole vocabulary."""
    import torch

    n = values.shape[-1]
    limited = top_k > 0
    kth = values.gather(1, (top_k.clamp(1, n) - 1).unsqueeze(1))  # [rows, 1]
    # TopK keeps every score >= its k-th (ties included).
    kept_k = torch.where(limited.unsqueeze(1), values >= kth, torch.ones_like(values, dtype=torch.bool))
    # TopP on what TopK kept: a token stays while the mass of the tokens above it is below top_p, which is
    # transformers' rule (ascending cumulative mass above 1 - top_p) read from the other end.
    masked = values.masked_fill(~kept_k, float("-inf"))
    own = torch.logsumexp(masked, dim=-1)
    denominator = own if total is None else torch.where(limited, own, total)
    probs = torch.exp(masked - denominator.unsqueeze(1))
    above = probs.cumsum(dim=-1) - probs
    kept = kept_k & ((above < top_p.unsqueeze(1)) | (top_p >= 1).unsqueeze(1))
    kept[:, 0] = True  # at least one token, as both warpers keep
    floor = values.gather(1, (kept.sum(dim=-1) - 1).unsqueeze(1)).squeeze(1)
    floor = torch.where(limited | (top_p < 1), floor, float("-inf"))
    # Undecided: no top-k, and the candidates' mass is below top_p, so tokens past them may still be kept.
    reached = limited | (top_p >= 1) | (probs.sum(dim=-1) >= top_p)
    return floor, reached
