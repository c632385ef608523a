"""What the chat benchmarks share: the machine, memory bandwidth, a served app in a child process, clients.

`python bench/common.py serve --model PATH` is the child: it launches the app and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(model: str, dtype: str = "bfloat16", fake: bool = False, info: dict | None = None,
               gradio_poll: bool = False, **settings) -> Iterator[str]:
    """The app serving `model` in a child process on a free loopback port; yields its base URL.

    A separate process, as in production: the client's Python work must not share the server's GIL.
    `fake` serves the /chat and /v1 routes around an instant fake model instead (see _launch_fake).
    `info`, when given, receives the child's pid and the dtype it serves in. `gradio_poll` keeps Gradio's
    default queue polling instead of the app's (web/ui's QUEUE_POLL_S), to measure what it costs.
    """
    port = free_port()
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()] + ["--gradio-poll"] * gradio_poll
    with tempfile.TemporaryDirectory() as adapters_dir:
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve-fake" if fake else "serve", "--model", model, "--dtype", dtype,
             "--port", str(port),
             "--adapters-dir", adapters_dir, "--data-dir", str(REPO / "data"), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            for line in proc.stdout:  # Gradio prints its own banner first
                if line.startswith("READY"):
                    (info if info is not None else {}).update(pid=proc.pid, **json.loads(line[5:]))
                    break
            else:
                raise RuntimeError(f"the app did not start (exit code {proc.wait()})")
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # never let its output block it
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)


def _serve(argv: list[str], fake: bool = False) -> None:
    """Child process: launch the app with these flags (block=False), serve until stdin closes.

    `fake`: the same /chat endpoint and /v1 routes around an instant fake model, to time the transport alone.
    """
    from llama_space.settings import load_settings

    if "--gradio-poll" in argv:  # bench-only: Gradio's own queue polling (1 ms, progress 10 ms), not the app's
        argv.remove("--gradio-poll")
        from llama_space.web import ui

        ui.QUEUE_POLL_S, ui.PROGRESS_POLL_S = 0.001, 0.01
    settings = load_settings(argv, environ={})
    dtype = ""
    if fake:
        demo = _launch_fake(settings)
    else:
        from llama_space.web.server import launch

        demo, app = launch(settings, block=False)
        dtype = str(app.state.backend.model.dtype).removeprefix("torch.")
    print("READY", json.dumps({"dtype": dtype}), flush=True)
    sys.stdin.read()
    demo.close()


class FakeStream:
    """A GenerationStream stand-in that yields `max_new_tokens` one-word chunks at once."""

    def __init__(self, n: int) -> None:
        self.n, self.prompt_tokens, self.completion_tokens = n, 1, 0
        self.finish_reason, self.dropped_messages = "length", 0
        self.time_to_first_token, self.tokens_per_second = 0.0, 0.0

    def __iter__(self) -> Iterator[str]:
        for _ in range(self.n):
            self.completion_tokens += 1
            yield "word "

    def close(self) -> None:
        pass


class FakeManager:
    """The slice of ModelManager that /chat and /v1 use, answering instantly."""

    def __init__(self, settings) -> None:
        self.settings, self.base_name = settings, "fake"

    def list_adapters(self) -> list[str]:
        return []

    def stream(self, messages, params, adapter: str = "") -> FakeStream:
        return FakeStream(params.max_new_tokens)

    def generate(self, messages, params, adapter: str = "") -> str:
        return "".join(self.stream(messages, params, adapter))


def _launch_fake(settings):
    import gradio as gr

    from llama_space.web.routes import register_routes
    from llama_space.web.ui.api import register_chat_api

    manager = FakeManager(settings)
    with gr.Blocks() as demo:
        register_chat_api(manager)
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.concurrency)
    app, _, _ = demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True)
    register_routes(app, manager, settings)
    return demo


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
    parser.add_argument("command", choices=["serve", "serve-fake", "decode"])
    known, rest = parser.parse_known_args()
    if known.command == "decode":
        parser.add_argument("--model")
        parser.add_argument("--dtype")
        parser.add_argument("--tokens", type=int)
        parser.add_argument("--threads", type=int, default=0)
        args = parser.parse_args()
        _decode(args.model, args.dtype, args.tokens, args.threads)
    else:
        _serve(rest, fake=known.command == "serve-fake")
