"""Per-step sampling time of a batch: per-row transformers warpers against the batched sampler, in one run.

    python bench/sampling.py                      # 32 rows x Llama 3's 128,256 tokens, 20 steps per way
    python bench/sampling.py --rows 8 --vocab 49152

"per-row" is how the batch engine sampled before `sampling.BatchSampler`: for each row transformers'
Temperature, TopK and TopP warpers (TopP sorts the whole vocabulary) and a multinomial draw from the row's own
generator, one host sync for the batch. "batched" is `BatchSampler.choose` for all rows. Both run on the same
random logits (normal, scaled by 3: a nucleus of some hundreds of tokens), with the API's default settings
(temperature 0.7, top_k 50, top_p 0.9) and with top-p alone (top_k 0), interleaved, median of the steps.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import common
from common import median


def per_row(params, rows: int):
    """The old way: a loop over rows, each through transformers' warpers and a multinomial draw."""
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(params.temperature), TopPLogitsWarper(params.top_p)]
    if params.top_k:
        warpers.insert(1, TopKLogitsWarper(params.top_k))
    generators = [torch.Generator().manual_seed(row) for row in range(rows)]

    def choose(logits):
        chosen = []
        for row, generator in zip(logits, generators):
            scores = row.float().unsqueeze(0)
            for warper in warpers:
                scores = warper(None, scores)
            chosen.append(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[0, 0])
        return torch.stack(chosen).tolist()

    return choose


def batched(params, rows: int, vocab: int):
    from llama_space.inference.sampling import BatchSampler

    sampler = BatchSampler()
    for row in range(rows):
        sampler.extend(BatchSampler.for_row(params, [], vocab, "cpu"))
    return lambda logits: sampler.choose(logits).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    from llama_space.inference.generation_params import GenerationParams

    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(args.rows, args.vocab, generator=generator) * 3 for _ in range(args.steps)]
    results = {}
    print(f"| settings | per-row ms/step | batched ms/step | speed-up |  ({args.rows} rows x {args.vocab} tokens)")
    print("|---|---|---|---|")
    for name, params in {"top_k 50, top_p 0.9": GenerationParams(temperature=0.7),
                         "top_p 0.9 alone": GenerationParams(temperature=0.7, top_k=0)}.items():
        ways = {"per-row": per_row(params, args.rows), "batched": batched(params, args.rows, args.vocab)}
        times: dict[str, list[float]] = {way: [] for way in ways}
        with torch.inference_mode():
            for step in logits:
                for way, choose in ways.items():
                    started = time.perf_counter()
                    choose(step)
                    times[way].append(time.perf_counter() - started)
        ms = {way: 1000 * median(values) for way, values in times.items()}
        results[name] = {**ms, "speedup": ms["per-row"] / ms["batched"]}
        print(f"| {name} | {ms['per-row']:.1f} | {ms['batched']:.1f} | {results[name]['speedup']:.1f}x |")
    print(json.dumps({"rows": args.rows, "vocab": args.vocab, "machine": common.machine(), "results": results}))


if __name__ == "__main__":
    main()
