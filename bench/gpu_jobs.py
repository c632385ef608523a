"""The training phases of bench/gpu_check.py: a job through the API with chat streaming beside it, and the
memory of the app and its job polled from outside. Imported by gpu_check.py, which puts bench/ on sys.path."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from concurrency import burst

import common
from common import median

MAX_LENGTH = 384  # the jobs' max_length: TrainingParams' default
FILLER = ["river", "mountain", "harbour", "lantern", "engine", "garden", "signal", "market", "winter", "paper"]


class MemoryPoll:
    """Peak memory of the app and its job: the card's used memory above `baseline` on CUDA, else the RSS of the
    app's process tree (the app and any job process it started), sampled every 50 ms while running."""

    def __init__(self, device: str, app_pid: int, baseline: int) -> None:
        self.device, self.app_pid, self.baseline = device, app_pid, baseline
        self.peak, self._stop = 0, threading.Event()

    def used(self) -> int:
        if self.device != "cpu":
            import torch

            free, total = torch.cuda.mem_get_info()
            return total - free - self.baseline
        import psutil

        root = psutil.Process(self.app_pid)
        rss = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return rss

    @contextmanager
    def running(self):
        self.peak, thread = 0, threading.Thread(target=self._loop, daemon=True)
        self._stop.clear()
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            self._stop.wait(0.05)


def write_rows(path: Path, words: int, count: int = 64) -> Path:
    """Alpaca rows of one shape (answers of `words` words), so every optimizer step trains about as many tokens."""
    rows = [{"instruction": f"Describe item {i} in detail.",
             "output": " ".join(FILLER[(i + k) % len(FILLER)] for k in range(words))} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def example_tokens(model_dir: Path, rows: Path) -> float:
    """Mean tokens per example, as the job tokenizes them."""
    from transformers import AutoTokenizer

    from llama_space.data import build_examples

    examples = build_examples(rows, AutoTokenizer.from_pretrained(model_dir), MAX_LENGTH)
    return sum(len(e["input_ids"]) for e in examples) / len(examples)


class ChatAlongside:
    """One streamed chat reply after another in a thread, each kept with its (start, end) wall-clock times."""

    def __init__(self, url: str, tokens: int) -> None:
        self.url, self.tokens = url, tokens
        self.replies: list[tuple[float, float, common.Sample]] = []
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._done.is_set():
            started = time.time()
            try:
                sample = burst(self.url, 1, self.tokens)[1][0]
            except Exception as exc:  # noqa: BLE001 - a refused or failed reply is a figure too
                self.failures.append(type(exc).__name__)
                time.sleep(0.5)
                continue
            self.replies.append((started, time.time(), sample))

    @contextmanager
    def running(self):
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join()

    def during(self, start: float, end: float) -> list[common.Sample]:
        """Replies that overlapped [start, end]; all of them if none did (a job of a few quick steps)."""
        inside = [s for began, ended, s in self.replies if began < end and ended > start]
        return inside or [s for _, _, s in self.replies]


def run_job(url: str, rows: Path, quantization: str, steps: int) -> tuple[str, dict]:
    """Start a job through /start_training (placement auto) and poll /job_status until it ends."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    job = client.predict(file=handle_file(str(rows)), adapter_name=f"gpu-check-{quantization}-{int(time.time())}",
                         preset="quick", max_steps=steps, max_length=MAX_LENGTH, save_steps=10**6,
                         placement="auto", quantization=quantization, api_name="/start_training")
    while (status := client.predict(job_id=job["job_id"], api_name="/job_status"))["state"] in ("queued", "running"):
        time.sleep(0.5)
    return job["job_id"], status


def train_with_chat(url: str, data_dir: Path, rows: Path, poll: MemoryPoll, quantization: str, steps: int,
                    tokens: int, per_example: float) -> dict:
    """One job while chat streams beside it: its placement, the peak memory, training and chat tok/s."""
    from llama_space.jobs import files as jobfiles

    with poll.running(), ChatAlongside(url, tokens).running() as chat:
        job_id, status = run_job(url, rows, quantization, steps)
    # /job_status answers the contract's fields; the plan and per-step metrics are in the job's folder.
    job_dir = data_dir / "jobs" / job_id
    status = {**jobfiles.read_json(job_dir / jobfiles.STATUS_FILE), **status}
    times = [m["time"] for m in jobfiles.read_metrics(job_dir) if m.get("loss") is not None]
    batch = 4  # the quick preset: batch 4, no accumulation
    train_tps = (len(times) - 1) * batch * per_example / (times[-1] - times[0]) if len(times) > 1 else 0.0
    replies = chat.during(times[0], times[-1]) if times else []
    plan = status.get("plan") or {}
    return {"state": status["state"], "error": status.get("error"), "placement": plan.get("placement"),
            "quantization": plan.get("quantization"), "estimate_gb": plan.get("estimate_gb"),
            "free_gb": plan.get("free_gb"), "reason": plan.get("reason"), "steps": status.get("step"),
            "peak_memory_gb": round(poll.peak / 1e9, 2), "train_tokens_per_s": round(train_tps, 1),
            "chat_replies": len(replies), "chat_failures": len(chat.failures),
            "chat_tps_during_training": round(median([s.decode_tps for s in replies if s.tokens > 1]), 2)}
