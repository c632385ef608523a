"""What the chat benchmarks share: the machine, memory bandwidth, clients, decoding in a fresh process, load.

`python bench/common.py decode --model PATH ...` is decode_in_child's child. The served app is in serving.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPTS = [
    "Write a short story about a dragon who learns to bake bread.",
    "Explain how a bicycle works to a ten-year-old.",
    "List ten tips for staying productive when working from home, with a sentence on each.",
]


def machine() -> dict:
    """CPU model, cores, RAM, torch threads and the OpenMP wait policy: what every figure depends on."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = re.search(r"MemTotal:\s*(\d+)", meminfo)
    flags = re.search(r"flags\s*:\s*(.+)", cpuinfo)
    return {"cpu": model.group(1).strip() if model else platform.processor(),
            "cores": os.cpu_count(), "ram_gb": round(int(mem_kb.group(1)) / 2**20, 1) if mem_kb else None,
            "avx512_bf16": bool(flags and "avx512_bf16" in flags.group(1).split()),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write), best of `repeats`."""
    import torch

    src = torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() / best


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter once, the input embedding only for one row."""
    params = {p.data_ptr(): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    if not tied:  # an untied input table is only indexed, one row per token
        total -= embedding.numel() * embedding.element_size() - embedding.shape[1] * embedding.element_size()
    return total


@dataclass
class Sample:
    """One reply as a client saw it."""

    ttft: float  # seconds from sending the request to the first non-empty text
    total: float  # seconds from sending to the end of the reply
    tokens: int  # completion tokens
    text: str

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first one (the decode rate, free of prefill and queueing)."""
        return (self.tokens - 1) / (self.total - self.ttft) if self.tokens > 1 and self.total > self.ttft else 0.0


def timed_stream(chunks: Iterator[str], started: float) -> tuple[float, float, str]:
    """(ttft, total, text) of a text-delta iterator whose request was sent at `started`."""
    first, text = None, ""
    for chunk in chunks:
        if chunk and first is None:
            first = time.perf_counter()
        text += chunk
    end = time.perf_counter()
    return (first or end) - started, end - started, text


def openai_deltas(client, url: str, body: dict, usage: dict) -> Iterator[str]:
    """Content deltas of a streamed POST /v1/chat/completions (httpx client); fills `usage` at the end."""
    with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True,
                       "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage.update(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if choice["delta"].get("content"):
                    yield choice["delta"]["content"]


def gradio_deltas(job) -> Iterator[str]:
    """Deltas from a gradio_client job whose updates are the whole reply so far."""
    previous = ""
    for update in job:
        yield update[len(previous):]
        previous = update


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleaved(rounds: int, cases: dict[str, Callable[[], Sample]]) -> dict[str, list[Sample]]:
    """Run every case once per round, in turn, so baseline and candidates see the same machine load."""
    results: dict[str, list[Sample]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            results[name].append(case())
    return results


def _decode(model: str, dtype: str, tokens: int, threads: int) -> None:
    """Child process: print one JSON line with plain greedy `generate` decode tokens/s (median of 3).

    threads: 0 = torch's default (all cores), -1 = our ThreadGovernor decides while decoding, else that many.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList

    from llama_space.inference.fast_decode import decode_hooks

    if threads > 0:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model)
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]

    def seconds(n: int) -> float:
        hooks = StoppingCriteriaList(decode_hooks(loaded) if threads < 0 else [])
        started = time.perf_counter()
        with torch.inference_mode():
            loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id, stopping_criteria=hooks)
        return time.perf_counter() - started

    seconds(4)
    rates = [(tokens - 1) / (seconds(tokens) - seconds(1)) for _ in range(3)]
    print(json.dumps({"decode_tps": median(rates), "load_avg_1min": os.getloadavg()[0]}))


# OpenMP waiting (libgomp reads it at start): spin (its default: ~300k spins before sleeping), passive
# (sleep at once), or a short spin before sleeping.
OMP_WAITS = {"spin": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin20k": {"GOMP_SPINCOUNT": "20000"}}


def decode_in_child(model: str, dtype: str, tokens: int, omp_wait: str, threads: int = 0) -> dict:
    """Plain `generate` decode speed in a fresh process with this OpenMP waiting and thread count."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_WAITS[omp_wait])
    out = subprocess.run([sys.executable, __file__, "decode", "--model", model, "--dtype", dtype,
                          "--tokens", str(tokens), "--threads", str(threads)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@contextmanager
def others_load(pids: list[int], into: list[float]) -> Iterator[None]:
    """Append to `into` the cores that processes other than this one and `pids` kept busy in the block:
    the other engineers' work on a shared machine, which every figure measured meanwhile depends on."""
    from llama_space.inference.fast_decode import cpu_seconds

    def sample() -> tuple[float, float, float]:
        wall, busy, own = cpu_seconds()
        return wall, busy, own + sum(_cpu_seconds(pid) for pid in pids)

    before = sample()
    try:
        yield
    finally:
        wall, busy, ours = (after - start for start, after in zip(before, sample()))
        into.append(max(0.0, (busy - ours) / wall) if wall > 0 else 0.0)


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """`n` processes spinning on a core each (what a training job does to chat), for the block's duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["decode"])
    parser.add_argument("--model")
    parser.add_argument("--dtype")
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    _decode(args.model, args.dtype, args.tokens, args.threads)
