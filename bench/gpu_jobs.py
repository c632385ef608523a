"""The training phases of bench/gpu_check.py, in-process: a LoRA job started through the service layer
(services.actions.start, what /start_training calls) with chat streaming beside it or not, the planner's estimate
against the job's measured peak, and the ballast that makes the card look smaller. Imported by gpu_check.py,
which puts bench/ on sys.path.

Peak memory is measured where the job's memory lives: a shared job's (a thread of this process) as
`torch.cuda.max_memory_allocated` above what was allocated before it started; a process job's as the card's used
memory (`mem_get_info`) above what it was before, polled every 20 ms, since another process's allocator cannot be
read from here (so it holds the job's CUDA context too, as the planner's process estimate does). On CPU both are
the resident memory (RSS) above its start, of this process or of the job's process.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from gpu_decode import one_reply

from common import median

FILLER = ["river", "mountain", "harbour", "lantern", "engine", "garden", "signal", "market", "winter", "paper"]


def write_rows(path: Path, words: int, count: int = 64) -> Path:
    """Alpaca rows of one shape (answers of `words` words), so every optimizer step trains about as many tokens."""
    rows = [{"instruction": f"Describe item {i} in detail.",
             "output": " ".join(FILLER[(i + k) % len(FILLER)] for k in range(words))} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def example_tokens(tokenizer, rows: Path, max_length: int) -> float:
    """Mean tokens per example, as the job tokenizes them."""
    from llama_space.data import build_examples

    examples = build_examples(rows, tokenizer, max_length)
    return sum(len(e["input_ids"]) for e in examples) / len(examples)


class PeakMemory:
    """The peak memory of a job above what was in use as it started (see the module docstring for how)."""

    def __init__(self, device: str, placement: str) -> None:
        self.device, self.placement = device, placement
        self.cuda = device.startswith("cuda")
        self.source = ("torch.cuda.max_memory_allocated" if placement == "shared" else "torch.cuda.mem_get_info"
                       ) if self.cuda else ("RSS of this process" if placement == "shared" else "RSS of the job process")
        self.peak, self._stop = 0, threading.Event()

    def _used(self) -> int:
        import psutil
        import torch

        if self.cuda:
            free, total = torch.cuda.mem_get_info()
            return total - free
        me = psutil.Process()
        procs = [me] if self.placement == "shared" else me.children(recursive=True)
        rss = 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return rss

    @contextmanager
    def watching(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            allocated = torch.cuda.memory_allocated()
        start = self._used() if self.placement == "shared" or self.cuda else 0
        self._stop.clear()
        thread = threading.Thread(target=self._poll, args=(start,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            if self.cuda and self.placement == "shared":
                torch.cuda.synchronize()
                self.peak = torch.cuda.max_memory_allocated() - allocated

    def _poll(self, start: int) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used() - start)
            self._stop.wait(0.02)


class ChatAlongside:
    """One greedy served reply after another in a thread, each kept with its (start, end) times."""

    def __init__(self, manager, tokens: int) -> None:
        self.manager, self.tokens = manager, tokens
        self.replies: list[tuple[float, float, dict]] = []
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._done.is_set():
            started = time.time()
            try:
                reply = one_reply(self.manager, self.tokens)
            except Exception as exc:  # noqa: BLE001 - a refused reply (the job's memory bound) is a figure too
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self._done.wait(0.5)
                continue
            self.replies.append((started, time.time(), reply))

    @contextmanager
    def running(self):
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join()

    def during(self, start: float, end: float) -> list[dict]:
        """Replies that overlapped [start, end]."""
        return [reply for began, ended, reply in self.replies if began < end and ended > start]


def run_job(services, rows: Path, params, timeout: float) -> tuple[str, dict]:
    """Start a job through the service layer as /start_training does and wait for its end (cancelling it after
    `timeout` seconds); (job id, its full status)."""
    actions = services.actions
    job_id = actions.start(str(rows), f"gpu-check-{params.placement}-{int(time.time() * 1e3)}", params)
    status = actions.runner.wait(job_id, timeout=timeout, poll=0.2)
    if status["state"] in ("queued", "running"):
        actions.cancel(job_id)
        status = {**actions.runner.wait(job_id, timeout=120, poll=0.2), "error": f"cancelled after {timeout:.0f} s"}
    return job_id, status


def train(services, rows: Path, params, per_example: float, timeout: float, chat_tokens: int = 0) -> dict:
    """One job (with greedy chat replies of `chat_tokens` beside it, if any): its plan, the planner's estimate
    against the measured peak, training tok/s and chat tok/s meanwhile."""
    from contextlib import nullcontext

    from llama_space.training.shared_runs import plan_job

    manager = services.backend
    _resolved, plan = plan_job(services.settings, manager, params)  # the placement the start will choose
    device = str(manager.model.device)
    peak = PeakMemory(device, plan["placement"])
    chat = ChatAlongside(manager, chat_tokens)
    with peak.watching(), (chat.running() if chat_tokens else nullcontext()):
        job_id, status = run_job(services, rows, params, timeout)
    times = [m["time"] for m in services.actions.runner.metrics(job_id) if m.get("loss") is not None]
    steps = max(0, len(times) - 1)
    train_tps = steps * params.batch_size * params.grad_accum * per_example / (times[-1] - times[0]) if steps else 0.0
    plan = status.get("plan") or plan
    # The plan's estimate keeps room for chat's KV cache beside the job (kv_reserve): the job itself allocates
    # the rest, which is what its peak is held against.
    own = plan["estimate_bytes"] - plan.get("kv_reserve_bytes", 0)
    result = {"state": status["state"], "error": status.get("error"), "placement": plan.get("placement"),
              "quantization": plan.get("quantization"), "reason": plan.get("reason"), "steps": status.get("step"),
              "estimate_gb": plan.get("estimate_gb"), "free_gb": plan.get("free_gb"),
              "job_estimate_gb": round(own / 1e9, 3), "peak_gb": round(peak.peak / 1e9, 3),
              "peak_source": peak.source, "train_tokens_per_s": round(train_tps, 1),
              "estimate_error": round(own / peak.peak - 1, 3) if peak.peak > 0 else None}
    if status["state"] != "completed":  # the traceback is in the job's log
        result["log_tail"] = (status.get("log_tail") or "")[-2000:]
    if chat_tokens:
        during = chat.during(times[0], times[-1]) if steps else []
        result.update(chat_replies=len(during), chat_failures=chat.failures[:3],
                      chat_tps_during=round(median([r["tps"] for r in during if r["tokens"] > 1]), 2))
    return result


def finished(jobs: dict, name: str, job: dict) -> dict:
    """Keep `job`'s figures under `name`; raise (failing the phase) unless the job completed."""
    jobs[name] = job
    if job["state"] != "completed":
        print(job.get("log_tail", ""), file=sys.stderr)
        raise RuntimeError(f"the job ended {job['state']}: {job['error']}")
    return job


@contextmanager
def card_of(gb: float, device: str):
    """Hold all of the card's free memory but what a `gb` GB card would leave beside what this process already
    uses (the served model), so the planner's mem_get_info and a job's own process see such a card. Yields the
    GB held (0 on CPU, where there is no card to fill); ValueError when this process alone uses more."""
    import torch

    if not device.startswith("cuda"):
        yield 0.0
        return
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    spare = int(free - (gb * 1e9 - (total - free)))
    if spare < 0:
        raise ValueError(f"this process already uses {(total - free) / 1e9:.1f} GB, more than a {gb} GB card")
    held = torch.empty(spare, dtype=torch.uint8, device=device)
    try:
        yield round(spare / 1e9, 2)
    finally:
        del held
        torch.cuda.empty_cache()
