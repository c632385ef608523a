"""N simultaneous chat streams against the launched app, serialised and batched, and what batching can give.

    python bench/concurrency.py           # embedded model; N = 1, 2, 4, 8 streams of 64 tokens; 2 rounds

Part 1 sends N streamed POST /v1/chat/completions at once to the app (a child process) and reports
aggregate tokens/s, per-stream decode tokens/s and TTFT, twice: with LLAMA_SPACE_CONCURRENCY=1 (one
generation at a time) and with the default batching (up to 8 requests decoded together); "x serial"
is the batched aggregate over the serial one, measured in the same run.
Part 2 times one decode step of the same model in-process at batch 1, 2, 4 and 8 (KV cache of ~150
tokens, best of 5 interleaved rounds): the ceiling batching could reach on this machine.
Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)
from common import PROMPTS, REPO, Sample, median  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="path or Hub id (default: the embedded model)")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=150, help="KV-cache length for the batched-step timing")
    parser.add_argument("--omp-wait", choices=sorted(common.OMP_WAITS), default="spin",
                        help="OpenMP waiting for this process and the app's (spin: libgomp's default, as the app)")
    return parser.parse_args()


def burst(url: str, n: int, max_new_tokens: int) -> tuple[float, list[Sample]]:
    """n streamed chat completions started together; (wall seconds, one Sample per stream)."""
    import httpx

    start = threading.Barrier(n)

    def one(i: int) -> Sample:
        body = {"model": "base", "max_tokens": max_new_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        usage: dict = {}
        with httpx.Client(timeout=600) as http:
            start.wait()
            started = time.perf_counter()
            ttft, total, text = common.timed_stream(common.openai_deltas(http, url, body, usage), started)
        return Sample(ttft, total, usage.get("completion_tokens", 0), text)

    began = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        samples = list(pool.map(one, range(n)))
    return time.perf_counter() - began, samples


def serve_bursts(source: str, counts: list[int], concurrency: int, args: argparse.Namespace) -> dict:
    """Bursts of each size in `counts` against an app decoding `concurrency` requests together."""
    runs: dict[int, list[tuple[float, list[Sample]]]] = {n: [] for n in counts}
    with common.served_app(source, max_queue=max(counts) + 1, concurrency=concurrency) as url:
        burst(url, 1, 8)  # warm-up
        for _ in range(args.rounds):
            for n in counts:
                runs[n].append(burst(url, n, args.max_new_tokens))
    streams = {}
    for n, results in runs.items():
        samples = [s for _, batch in results for s in batch]
        streams[n] = {"aggregate_tps": round(median([sum(s.tokens for s in b) / wall for wall, b in results]), 2),
                      "per_stream_decode_tps": round(median([s.decode_tps for s in samples]), 2),
                      "ttft_median_ms": round(median([s.ttft for s in samples]) * 1e3),
                      "ttft_max_ms": round(max(s.ttft for s in samples) * 1e3)}
    return streams


def step_seconds(model, batch: int, context: int, steps: int = 8) -> float:
    """Seconds for one greedy decode step of `batch` sequences with `context` tokens already cached."""
    import torch

    ids = torch.randint(100, 1000, (batch, context))
    with torch.inference_mode():
        cache = model(ids, use_cache=True).cache
        token = ids[:, -1:]
        started = time.perf_counter()
        for _ in range(steps):
            out = model(token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - started) / steps


def main() -> None:
    args = parse_args()
    os.environ.update(common.OMP_WAITS[args.omp_wait])  # before torch loads OpenMP; the app's process inherits it
    import torch
    from transformers import AutoModelForCausalLM

    from llama_space.inference.loading import resolve_model

    source = resolve_model(args.model, REPO / "data" / "cache")
    counts = [int(n) for n in args.streams.split(",")]
    modes = {"serial": 1, "batched": max(counts)}
    streams = {mode: serve_bursts(source, counts, concurrency, args) for mode, concurrency in modes.items()}

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    batches = (1, 2, 4, 8)
    timings: dict[int, list[float]] = {b: [] for b in batches}
    step_seconds(model, 1, args.context, 2)
    for _ in range(5):
        for b in batches:
            timings[b].append(step_seconds(model, b, args.context))
    # Best of 5 interleaved rounds: the step's own cost, with other processes' interference filtered out.
    best = {b: min(t) for b, t in timings.items()}
    steps = {b: {"step_ms": round(t * 1e3, 1), "cost_vs_batch1": round(t / best[1], 2),
                 "aggregate_tps": round(b / t, 1), "speedup_vs_serial": round(b * best[1] / t, 2)}
             for b, t in best.items()}

    print(f"{'mode':>8}{'streams':>8}{'aggregate tok/s':>17}{'x serial':>10}{'per-stream tok/s':>18}"
          f"{'TTFT median ms':>16}{'TTFT max ms':>13}")
    for mode, rows in streams.items():
        for n, row in rows.items():
            row["x_serial"] = round(row["aggregate_tps"] / streams["serial"][n]["aggregate_tps"], 2)
            print(f"{mode:>8}{n:>8}{row['aggregate_tps']:>17.1f}{row['x_serial']:>10.2f}"
                  f"{row['per_stream_decode_tps']:>18.1f}{row['ttft_median_ms']:>16}{row['ttft_max_ms']:>13}")
    print(f"\n{'batch':>8}{'step ms':>10}{'x batch 1':>11}{'tok/s':>8}{'vs serial':>11}")
    for b, row in steps.items():
        print(f"{b:>8}{row['step_ms']:>10.1f}{row['cost_vs_batch1']:>11.2f}{row['aggregate_tps']:>8.1f}"
              f"{row['speedup_vs_serial']:>11.2f}")
    print(json.dumps({"bench": "concurrency", "machine": common.machine(), "model": source,
                      "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "streams": streams,
                      "context": args.context, "batched_decode_step": steps}))


if __name__ == "__main__":
    main()
