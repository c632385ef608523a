"""N simultaneous chat streams against the launched app, serialised and batched, and what batching can give.

    python bench/concurrency.py           # embedded model; N = 1, 2, 4, 8 streams of 64 tokens; 2 rounds
    python bench/concurrency.py --parts stall     # only part 3

Part 1 sends N streamed POST /v1/chat/completions at once to the app (a child process) and reports
aggregate tokens/s, per-stream decode tokens/s and TTFT, twice: with LLAMA_SPACE_CONCURRENCY=1 (one
generation at a time) and with the default batching (up to 8 requests decoded together); "x serial"
is the batched aggregate over the serial one, measured in the same run.
Part 2 times one decode step of the same model in-process at batch 1, 2, 4 and 8 (KV cache of ~150
tokens, best of 5 interleaved rounds): the ceiling batching could reach on this machine.
Part 3 (in-process batch engine) starts a few streams, lets them decode, then sends a long prompt (~3.5k
tokens) and reports the worst stall of the other rows' tokens while it joins (the largest gap between
two consecutive tokens of an already-running stream, from the long prompt's arrival to its first token),
with its prompt prefilled in one pass ("one-shot": the chunk is the whole prompt) and in
prefill.PREFILL_CHUNK chunks ("chunked"), in interleaved rounds.
Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import common
import serving
from common import PROMPTS, REPO, Sample, median


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="path or Hub id (default: the embedded model)")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=150, help="KV-cache length for the batched-step timing")
    parser.add_argument("--parts", default="bursts,steps,stall", help="which parts to run (comma-separated)")
    parser.add_argument("--long-prompt", type=int, default=3500, help="prompt tokens of the joining request")
    parser.add_argument("--running", type=int, default=3, help="streams decoding when the long prompt arrives")
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
    with serving.served_app(source, max_queue=max(counts) + 1, concurrency=concurrency) as url:
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


def timed_tokens(stream) -> list[float]:
    """The perf_counter time of each token the engine hands `stream` from now on."""
    times: list[float] = []
    put = stream.put

    def put_timed(token_id: int) -> None:
        times.append(time.perf_counter())
        put(token_id)

    stream.put = put_timed
    return times


def join_stall(manager, long_text: str, running: int) -> dict:
    """Running streams, then a long prompt joining them: the worst gap in their tokens while it prefills."""
    from llama_space.inference.generation_params import GenerationParams

    ask = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]} for i in range(running)]
    streams = [manager.stream([message], GenerationParams(temperature=0, max_new_tokens=2048)) for message in ask]
    times = [timed_tokens(stream) for stream in streams]
    while min(len(t) for t in times) < 8:  # every row decoding in the batch
        time.sleep(0.01)
    arrived = time.perf_counter()
    long_ask = [{"role": "user", "content": long_text}]
    joining = manager.stream(long_ask, GenerationParams(temperature=0, max_new_tokens=2))
    first = timed_tokens(joining)
    while not first:
        time.sleep(0.01)
    for stream in streams:
        stream.close()
    "".join(joining)
    gaps = [b - a for t in times for a, b in itertools.pairwise(t) if b > arrived and a < first[0]]
    usual = [b - a for t in times for a, b in itertools.pairwise(t) if b <= arrived]
    return {"worst_stall_ms": round(max(gaps) * 1e3), "usual_gap_ms": round(median(usual) * 1e3),
            "long_prompt_ttft_ms": round((first[0] - arrived) * 1e3), "prompt_tokens": joining.prompt_tokens}


def stall_rounds(source: str, args: argparse.Namespace) -> dict:
    """join_stall with the long prompt prefilled one-shot and in chunks, `args.rounds` interleaved rounds each."""
    from llama_space.inference import prefill
    from llama_space.inference.manager import ModelManager
    from llama_space.settings import Settings

    manager = ModelManager(Settings(model=source, concurrency=args.running + 1, max_queue=2)).load()
    sentence = "Summarise the history of the Roman Empire, from Augustus to the fall of Constantinople. "
    long_text = sentence * (args.long_prompt * 10 // manager.count_tokens(sentence * 10))
    chunks = {"one-shot": 10**9, "chunked": prefill.PREFILL_CHUNK}
    runs: dict[str, list[dict]] = {mode: [] for mode in chunks}
    join_stall(manager, sentence, args.running)  # warm-up
    for _ in range(args.rounds):
        for mode, chunk in chunks.items():
            prefill.PREFILL_CHUNK = chunk
            runs[mode].append(join_stall(manager, long_text, args.running))
    manager.close()
    return {mode: {"chunk": chunks[mode] if mode == "chunked" else "whole prompt", "rounds": rounds}
            for mode, rounds in runs.items()}


def print_stalls(stalls: dict) -> None:
    print(f"\n{'prefill':>10}{'chunk':>14}{'prompt':>8}{'worst stall ms':>16}{'usual gap ms':>14}"
          f"{'long TTFT ms':>14}")
    for mode, result in stalls.items():
        for r in result["rounds"]:
            print(f"{mode:>10}{result['chunk']:>14}{r['prompt_tokens']:>8}{r['worst_stall_ms']:>16}"
                  f"{r['usual_gap_ms']:>14}{r['long_prompt_ttft_ms']:>14}")


def decode_steps(source: str, context: int) -> dict:
    """Part 2: one bf16 decode step at batch 1, 2, 4 and 8, best of 5 interleaved rounds."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    batches = (1, 2, 4, 8)
    timings: dict[int, list[float]] = {b: [] for b in batches}
    step_seconds(model, 1, context, 2)
    for _ in range(5):
        for b in batches:
            timings[b].append(step_seconds(model, b, context))
    # Best of 5 interleaved rounds: the step's own cost, with other processes' interference filtered out.
    best = {b: min(t) for b, t in timings.items()}
    return {b: {"step_ms": round(t * 1e3, 1), "cost_vs_batch1": round(t / best[1], 2),
                "aggregate_tps": round(b / t, 1), "speedup_vs_serial": round(b * best[1] / t, 2)}
            for b, t in best.items()}


def print_bursts(streams: dict) -> None:
    print(f"{'mode':>8}{'streams':>8}{'aggregate tok/s':>17}{'x serial':>10}{'per-stream tok/s':>18}"
          f"{'TTFT median ms':>16}{'TTFT max ms':>13}")
    for mode, rows in streams.items():
        for n, row in rows.items():
            row["x_serial"] = round(row["aggregate_tps"] / streams["serial"][n]["aggregate_tps"], 2)
            print(f"{mode:>8}{n:>8}{row['aggregate_tps']:>17.1f}{row['x_serial']:>10.2f}"
                  f"{row['per_stream_decode_tps']:>18.1f}{row['ttft_median_ms']:>16}{row['ttft_max_ms']:>13}")


def print_steps(steps: dict) -> None:
    print(f"\n{'batch':>8}{'step ms':>10}{'x batch 1':>11}{'tok/s':>8}{'vs serial':>11}")
    for b, row in steps.items():
        print(f"{b:>8}{row['step_ms']:>10.1f}{row['cost_vs_batch1']:>11.2f}{row['aggregate_tps']:>8.1f}"
              f"{row['speedup_vs_serial']:>11.2f}")


def main() -> None:
    args = parse_args()
    os.environ.update(common.OMP_WAITS[args.omp_wait])  # before torch loads OpenMP; the app's process inherits it
    from llama_space.model.source import resolve_model

    source = resolve_model(args.model, REPO / "data" / "cache")
    parts = set(args.parts.split(","))
    report: dict = {"bench": "concurrency", "model": source, "rounds": args.rounds}
    if "bursts" in parts:
        counts = [int(n) for n in args.streams.split(",")]
        modes = {"serial": 1, "batched": max(counts)}
        report["streams"] = {mode: serve_bursts(source, counts, concurrency, args)
                             for mode, concurrency in modes.items()}
        report["max_new_tokens"] = args.max_new_tokens
        print_bursts(report["streams"])
    if "steps" in parts:
        report["context"], report["batched_decode_step"] = args.context, decode_steps(source, args.context)
        print_steps(report["batched_decode_step"])
    if "stall" in parts:
        report["long_prompt_join"] = stall_rounds(source, args)
        print_stalls(report["long_prompt_join"])
    report["machine"] = common.machine()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
