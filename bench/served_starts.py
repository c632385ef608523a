"""Served `/generate` against plain `generate` over several app starts, paired round by round.

    python bench/served_starts.py --starts 3 --rounds 8 --max-new-tokens 160
    python bench/chat.py --starts 3 ...      # the same
    python bench/served_starts.py --gradio-poll-too   # also starts with Gradio's default queue polling

Each start launches the app (dtype auto, as `make run` does) in a child process. Every round times, in turn,
plain greedy `generate` in this process (fp32 and bf16, all cores) and `/generate` through `gradio_client`
there; the order rotates from round to round. Decode tok/s = (tokens - 1) / (whole reply - a one-token call).

A shared 2-core VM's speed drifts by 10-30% from one reply to the next, so the two paths are compared within
each round (served / the better plain dtype of that round) and the median of those paired ratios is the
figure per start; the best reply of each path over the start is given too. Prints a line per start, the
median over every round of every start, then one JSON line with every sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import common
import serving
from common import PROMPTS, REPO, Sample, median

DTYPES = ("float32", "bfloat16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="path or Hub id (default: the embedded model)")
    parser.add_argument("--starts", type=int, default=3, metavar="N", help="app starts")
    parser.add_argument("--rounds", type=int, default=8, help="paired rounds per start")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--gradio-poll-too", action="store_true",
                        help="also start the app with Gradio's default queue polling (1 ms), alternating starts")


def plain_case(model, input_ids: list[int], max_new_tokens: int, pad_id: int):
    """Plain greedy `generate`, no streamer: a one-token call (the fixed latency), then the whole reply."""
    import torch

    ids = torch.tensor([input_ids])

    def generate(n: int) -> tuple[float, int]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 pad_token_id=pad_id)
        return time.perf_counter() - started, out.shape[1] - ids.shape[1]

    def case() -> Sample:
        (ttft, _), (total, tokens) = generate(1), generate(max_new_tokens)
        return Sample(ttft, total, tokens, "")

    return case


def generate_case(client, tokenizer, prompt: str, max_new_tokens: int):
    """gradio_client /generate, timed like plain_case; tokens counted by re-tokenizing the reply."""
    def call(n: int) -> tuple[float, str]:
        started = time.perf_counter()
        text = client.predict(prompt=prompt, system_prompt="", adapter="", max_new_tokens=n, temperature=0,
                              top_p=1.0, api_name="/generate")
        return time.perf_counter() - started, text

    def case() -> Sample:
        (ttft, _), (total, text) = call(1), call(max_new_tokens)
        return Sample(ttft, total, len(tokenizer(text, add_special_tokens=False)["input_ids"]), text)

    return case


def paired_rounds(rounds: int, cases: dict) -> dict[str, list[float]]:
    """Decode tok/s of every case per round, the order rotated by one each round."""
    names = list(cases)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(round(cases[name]().decode_tps, 2))
    return rates


def one_start(args, source: str, tokenizer, plain: dict, gradio_poll: bool = False) -> dict:
    from gradio_client import Client

    from llama_space.inference.prompting import build_prompt, normalize_messages

    prompt = PROMPTS[0]
    ids = build_prompt(tokenizer, normalize_messages([], prompt), 8192, args.max_new_tokens).input_ids
    info: dict = {}
    with serving.served_app(source, dtype="auto", info=info, gradio_poll=gradio_poll) as url:
        cases = {f"plain_{dtype}": plain_case(model, ids, args.max_new_tokens, tokenizer.pad_token_id)
                 for dtype, model in plain.items()}
        cases["served"] = generate_case(Client(url, verbose=False), tokenizer, prompt, args.max_new_tokens)
        for case in cases.values():  # warm-up: first calls pay one-off costs (allocations, connections)
            case()
        load: list[float] = []
        with common.others_load([info["pid"]], load):
            rates = paired_rounds(args.rounds, cases)
    best_plain = [max(rates[f"plain_{d}"][r] for d in DTYPES) for r in range(args.rounds)]
    ratios = [round(s / p, 3) for s, p in zip(rates["served"], best_plain) if p > 0]
    return {"app_dtype": info["dtype"], "queue_poll": "gradio 1 ms" if gradio_poll else "app",
            "samples": rates, "paired_ratios": ratios,
            "served_vs_best_plain": round(median(ratios), 3),
            "best_reply_ratio": round(max(rates["served"]) / max(max(rates[f"plain_{d}"]) for d in DTYPES), 3),
            "median_tps": {name: round(median(values), 2) for name, values in rates.items()},
            "others_cores": round(load[0], 2)}


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_space.model.source import resolve_model

    source = resolve_model(args.model, REPO / "data" / "cache")
    tokenizer = AutoTokenizer.from_pretrained(source)
    plain = {dtype: AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).eval()
             for dtype in DTYPES}
    starts = []
    polls = (False, True) if getattr(args, "gradio_poll_too", False) else (False,)
    for start in range(args.starts * len(polls)):
        pair, turn = divmod(start, len(polls))  # which setting goes first alternates from pair to pair
        result = one_start(args, source, tokenizer, plain, gradio_poll=polls[(pair + turn) % len(polls)])
        starts.append(result)
        tps, ratios = result["median_tps"], result["paired_ratios"]
        print(f"start {start + 1} (queue polling: {result['queue_poll']}): app chose {result['app_dtype']}; "
              f"median tok/s plain fp32 {tps['plain_float32']:.1f}, "
              f"plain bf16 {tps['plain_bfloat16']:.1f}, served {tps['served']:.1f}; served / best plain per round "
              f"{min(ratios):.2f}-{max(ratios):.2f}, median {result['served_vs_best_plain']:.2f}x; best replies "
              f"{result['best_reply_ratio']:.2f}x; other processes kept {result['others_cores']:.2f} cores busy",
              flush=True)
    for poll in dict.fromkeys(result["queue_poll"] for result in starts):
        pooled = [r for result in starts if result["queue_poll"] == poll for r in result["paired_ratios"]]
        print(f"queue polling {poll}: served / best plain over every round of every start, median "
              f"{median(pooled):.3f}x ({len(pooled)} rounds)")
    print(json.dumps({"bench": "served-starts", "machine": common.machine(), "model": source,
                      "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "starts": starts}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
