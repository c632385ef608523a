"""Time to first token and decode speed of one chat reply along every path, same prompts, interleaved.

    python bench/chat.py                  # embedded SmolLM2-135M-Instruct, 3 rounds x 3 prompts, 128 tokens
    python bench/chat.py --compile        # adds plain generate with static cache + torch.compile (minutes)
    python bench/chat.py --omp-ab 3 --max-new-tokens 32 [--contend 2]   # dtype x OpenMP waiting x threads
    python bench/chat.py --starts 3 --rounds 8 --max-new-tokens 160   # bench/served_starts.py: served vs plain

Paths: (a) plain fp32 `model.generate`, no streamer, as the tutorial did it; (a2) the same in bfloat16;
(b) our in-process `ModelManager.stream`; (c) gradio_client against the launched app's /chat;
(d) POST /v1/chat/completions with stream=true over httpx. (c) and (d) go to the app in a child process.
Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import common
import served_starts
import serving
from common import PROMPTS, REPO, Sample, median
from served_starts import plain_case


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="path or Hub id (default: the embedded model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the built-in prompts")
    parser.add_argument("--compile", action="store_true", help="also time static cache + torch.compile")
    parser.add_argument("--no-app", action="store_true", help="skip (c) and (d)")
    parser.add_argument("--omp-wait", choices=sorted(common.OMP_WAITS), default="spin",
                        help="OpenMP waiting for this process and the app's (spin: libgomp's default, as the app)")
    parser.add_argument("--omp-ab", type=int, default=0, metavar="ROUNDS",
                        help="instead: plain generate in fresh processes, dtype x OpenMP waiting x threads, "
                             "alternating for ROUNDS rounds")
    parser.add_argument("--starts", type=int, default=0, metavar="N",
                        help="instead: N app starts (dtype auto, as the app defaults), each timing plain generate "
                             "fp32/bf16 here and /generate there, paired for --rounds rounds")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="with --omp-ab: N busy processes alongside, as a training job would be")
    return parser.parse_args()


def manager_case(manager, messages: list[dict], params):
    """(b): the in-process streaming path every route uses."""
    def case() -> Sample:
        started = time.perf_counter()
        stream = manager.stream(messages, params)
        ttft, total, text = common.timed_stream(stream, started)
        return Sample(ttft, total, stream.completion_tokens, text)

    return case


def gradio_case(client, tokenizer, prompt: str, max_new_tokens: int):
    """(c): gradio_client submit + iterate on /chat; tokens counted by re-tokenizing the reply."""
    def case() -> Sample:
        started = time.perf_counter()
        job = client.submit(message=prompt, history=[], system_prompt="", adapter="",
                            max_new_tokens=max_new_tokens, temperature=0, top_p=1.0, api_name="/chat")
        ttft, total, text = common.timed_stream(common.gradio_deltas(job), started)
        return Sample(ttft, total, len(tokenizer(text, add_special_tokens=False)["input_ids"]), text)

    return case


def openai_case(http, url: str, prompt: str, max_new_tokens: int):
    """(d): streamed chat completion over SSE; tokens from the usage chunk."""
    body = {"model": "base", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_new_tokens,
            "temperature": 0}

    def case() -> Sample:
        usage: dict = {}
        started = time.perf_counter()
        ttft, total, text = common.timed_stream(common.openai_deltas(http, url, body, usage), started)
        return Sample(ttft, total, usage.get("completion_tokens", 0), text)

    return case


def transport_overheads(repeats: int = 10, chunks: int = 512) -> dict:
    """Fixed latency and per-chunk cost of (c) and (d) around an instant fake model: the transport alone."""
    import httpx
    from gradio_client import Client

    with serving.served_app("fake", fake=True) as url:
        client, http = Client(url, verbose=False), httpx.Client(timeout=60)
        gradio = gradio_case(client, _Words(), "hi", 1)
        first, many = openai_case(http, url, "hi", 1), openai_case(http, url, "hi", chunks)
        for case in (gradio, first, many):  # warm-up
            case()
        ttft_c = median([gradio().ttft for _ in range(repeats)])
        ttft_d = median([first().ttft for _ in range(repeats)])
        per_chunk = median([(s.total - s.ttft) / (chunks - 1) for s in (many() for _ in range(3))])
    return {"c_gradio_ttft_ms": round(ttft_c * 1e3, 1), "d_openai_ttft_ms": round(ttft_d * 1e3, 1),
            "d_openai_us_per_chunk": round(per_chunk * 1e6)}


class _Words:
    """Counts words as tokens: the fake model's chunks are one word each."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": text.split()}


def summarise(results: dict[str, list[Sample]], bytes_per_token: dict[str, int], bandwidth: float) -> dict:
    rows = {}
    for name, samples in results.items():
        tps = median([s.decode_tps for s in samples])
        rows[name] = {"ttft_ms": round(median([s.ttft for s in samples]) * 1e3, 1), "decode_tps": round(tps, 2),
                      "ttft_ms_iqr": _quartiles([s.ttft * 1e3 for s in samples]),
                      "decode_tps_iqr": _quartiles([s.decode_tps for s in samples]),
                      "tokens": sum(s.tokens for s in samples), "samples": len(samples),
                      "bandwidth_fraction": round(tps * bytes_per_token[name] / bandwidth, 3)}
    base, ours = rows["a_tutorial_fp32"], rows.get("b_manager_stream")
    for row in rows.values():
        row["vs_a"] = round(row["decode_tps"] / base["decode_tps"], 3)
        row["ttft_vs_a_ms"] = round(row["ttft_ms"] - base["ttft_ms"], 1)
        if ours:
            row["vs_b"] = round(row["decode_tps"] / ours["decode_tps"], 3)
            row["ttft_vs_b_ms"] = round(row["ttft_ms"] - ours["ttft_ms"], 1)
    return rows


def _quartiles(values: list[float]) -> list[float]:
    """[25th, 75th] percentile: how much the interleaved samples spread."""
    import statistics

    if len(values) < 2:
        return [round(values[0], 1)] * 2 if values else []
    q = statistics.quantiles(values, n=4)
    return [round(q[0], 1), round(q[2], 1)]


def print_table(rows: dict, bandwidth: float) -> None:
    print(f"memory bandwidth (copy, read+write): {bandwidth / 1e9:.1f} GB/s")
    print(f"{'path':<24}{'TTFT ms':>9}{'tok/s':>8}{'x (a)':>7}{'x (b)':>7}{'TTFT-(b)':>10}{'% BW':>7}")
    for name, row in rows.items():
        print(f"{name:<24}{row['ttft_ms']:>9.0f}{row['decode_tps']:>8.1f}{row['vs_a']:>7.2f}"
              f"{row.get('vs_b', float('nan')):>7.2f}{row.get('ttft_vs_b_ms', float('nan')):>+10.0f}"
              f"{100 * row['bandwidth_fraction']:>7.1f}")


# (dtype, OpenMP waiting, threads; 0 = all cores, -1 = ThreadGovernor, as the app decodes): baseline first.
AB_VARIANTS = [("float32", "spin", 0), ("bfloat16", "spin", 0), ("bfloat16", "passive", 0),
               ("bfloat16", "spin", 1), ("bfloat16", "spin", -1)]


def omp_ab(model: str, rounds: int, tokens: int, contend: int) -> None:
    """Plain generate in fresh processes: dtype x OpenMP waiting x threads, alternating, optionally contended."""
    from llama_space.model.source import resolve_model

    source = resolve_model(model, REPO / "data" / "cache")
    rates: dict[str, list[float]] = {"/".join(map(str, v)): [] for v in AB_VARIANTS}
    loads = []
    with common.busy_cores(contend):
        for _ in range(rounds):
            for dtype, wait, threads in AB_VARIANTS:
                result = common.decode_in_child(source, dtype, tokens, wait, threads)
                rates[f"{dtype}/{wait}/{threads}"].append(result["decode_tps"])
                loads.append(round(result["load_avg_1min"], 2))
    base = median(rates["float32/spin/0"])
    print(f"busy processes alongside: {contend}")
    print(f"{'dtype/wait/threads':<24}{'tok/s':>8}{'x baseline':>12}   samples")
    for name, values in rates.items():
        print(f"{name:<24}{median(values):>8.1f}{median(values) / base:>12.2f}   "
              + " ".join(f"{v:.1f}" for v in values))
    print(json.dumps({"bench": "chat-omp-ab", "machine": common.machine(), "model": source, "tokens": tokens,
                      "rounds": rounds, "busy_processes": contend, "load_avg_1min": loads,
                      "decode_tps": {k: round(median(v), 2) for k, v in rates.items()}, "samples": rates}))


def main() -> None:
    args = parse_args()
    if args.starts:
        served_starts.run(args)
        return
    if args.omp_ab:
        omp_ab(args.model, args.omp_ab, args.max_new_tokens, args.contend)
        return
    os.environ.update(common.OMP_WAITS[args.omp_wait])  # before torch loads OpenMP; the app's process inherits it
    import httpx
    import torch
    from gradio_client import Client
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_space.inference.fast_decode import prepare_decode
    from llama_space.inference.generation_params import GenerationParams
    from llama_space.inference.manager import ModelManager
    from llama_space.inference.prompting import build_prompt, normalize_messages
    from llama_space.model.source import resolve_model
    from llama_space.settings import Settings

    source = resolve_model(args.model, REPO / "data" / "cache")
    tokenizer = AutoTokenizer.from_pretrained(source)
    fp32 = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    adapters_dir = Path(tempfile.mkdtemp())
    manager = ModelManager(Settings(model=source, dtype="bfloat16", data_dir=REPO / "data",
                                    adapters_dir=adapters_dir)).load()
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0)
    bytes_per_token = {"a_tutorial_fp32": common.weight_bytes_per_token(fp32)}
    compiled, compile_seconds = None, None
    if args.compile:  # what LLAMA_SPACE_COMPILE=on does at start-up, timed
        compiled = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
        compile_seconds = round(prepare_decode(compiled, tokenizer, "on").warmup_seconds, 1)

    cases, prompts = {}, PROMPTS[:args.prompts]
    with nullcontext() if args.no_app else serving.served_app(source) as url:
        client = Client(url, verbose=False) if url else None
        http = httpx.Client(timeout=600)
        for i, prompt in enumerate(prompts):
            messages = normalize_messages([], prompt)
            ids = build_prompt(tokenizer, messages, manager.context_window, args.max_new_tokens).input_ids
            cases[f"a_tutorial_fp32/{i}"] = plain_case(fp32, ids, args.max_new_tokens, tokenizer.pad_token_id)
            cases[f"a2_generate_bf16/{i}"] = plain_case(bf16, ids, args.max_new_tokens, tokenizer.pad_token_id)
            if compiled is not None:
                cases[f"a3_compiled_bf16/{i}"] = plain_case(compiled, ids, args.max_new_tokens,
                                                            tokenizer.pad_token_id)
            cases[f"b_manager_stream/{i}"] = manager_case(manager, messages, params)
            if url:
                cases[f"c_gradio_client/{i}"] = gradio_case(client, tokenizer, prompt, args.max_new_tokens)
                cases[f"d_openai_sse/{i}"] = openai_case(http, url, prompt, args.max_new_tokens)
        for case in cases.values():  # warm-up: first calls pay one-off costs (allocations, connections)
            case()
        machine = common.machine()
        by_case = common.interleaved(args.rounds, cases)

    results: dict[str, list[Sample]] = {}
    for key, samples in by_case.items():
        results.setdefault(key.split("/")[0], []).extend(samples)
    for name in results:
        bytes_per_token.setdefault(name, common.weight_bytes_per_token(bf16))
    same_text = {name: all(by_case[f"{name}/{i}"][0].text == by_case[f"b_manager_stream/{i}"][0].text
                           for i in range(len(prompts)))
                 for name in ("c_gradio_client", "d_openai_sse") if name in results}
    bandwidth = common.memory_bandwidth()
    rows = summarise(results, bytes_per_token, bandwidth)
    print_table(rows, bandwidth)
    if compile_seconds is not None:
        print(f"compiling the decode step at start-up (compile=on) took {compile_seconds} s")
    transport = {} if args.no_app else transport_overheads()
    if transport:
        print("transport alone (instant fake model): /chat TTFT {c_gradio_ttft_ms} ms, /v1 TTFT {d_openai_ttft_ms} "
              "ms, /v1 {d_openai_us_per_chunk} us per streamed chunk".format(**transport))
    targets = {name: {"tps_ge_95pct_of_a": rows[name]["vs_a"] >= 0.95,
                      "ttft_le_a_plus_50ms": rows[name]["ttft_vs_a_ms"] <= 50,
                      "tps_ge_95pct_of_b": rows[name].get("vs_b", 0) >= 0.95,
                      "ttft_le_b_plus_50ms": rows[name].get("ttft_vs_b_ms", 1e9) <= 50}
               for name in ("c_gradio_client", "d_openai_sse") if name in rows}
    print(json.dumps({"bench": "chat", "machine": machine, "model": source, "max_new_tokens": args.max_new_tokens,
                      "rounds": args.rounds, "prompts": len(prompts), "bandwidth_gbs": round(bandwidth / 1e9, 2),
                      "weight_bytes_per_token": bytes_per_token, "results": rows, "same_text_as_b": same_text,
                      "transport_overheads": transport, "compile_warmup_seconds": compile_seconds,
                      "targets": targets}))


if __name__ == "__main__":
    main()
