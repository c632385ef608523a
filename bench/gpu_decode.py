"""The decode phases of bench/gpu_check.py, in-process: plain `generate` on the served weights against the served
path (ModelManager.stream, the call every route makes) for one stream, N streams at once, and the memory
bandwidth that bounds one stream. Imported by gpu_check.py, which puts bench/ on sys.path."""

from __future__ import annotations

import threading
import time

import common
from common import median

QUESTION = [{"role": "user", "content": common.PROMPTS[0]}]
# Peak memory bandwidth by device name (the makers' figures), for the one-stream target; other cards are held
# to the bandwidth of a large on-device copy, which reads a little below the peak.
SPEC_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H200": 4.8e12,
                  "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A10G": 0.6e12, "L4": 0.3e12}


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU has nothing queued)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large tensor copy on `device` (read + write), best of 5 after a warm-up."""
    import torch

    if device == "cpu":
        return common.memory_bandwidth()
    src = torch.ones(2**31, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        synchronize(device)
        started = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2**31 / best


def bandwidth(manager) -> dict:
    """The one-stream bandwidth limit: weight bytes one decode step reads over the device's bandwidth (its
    maker's peak where SPEC_BANDWIDTH knows the card, else the copy's), with both figures."""
    import torch

    device = str(manager.model.device)
    with manager.holding_model() as (model, _peft):
        weight_bytes = common.weight_bytes_per_token(model)
    copy = copy_bandwidth(device)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else ""
    spec = next((peak for key, peak in SPEC_BANDWIDTH.items() if key in name), None)
    limit_from = spec or copy
    return {"weight_bytes": weight_bytes, "copy_bandwidth_gb_s": round(copy / 1e9, 1),
            "spec_bandwidth_gb_s": round(spec / 1e9, 1) if spec else None,
            "bandwidth_limit_tps": round(limit_from / weight_bytes, 2)}


def plain_generate(manager, tokens: int, rounds: int) -> float:
    """Greedy `generate` tok/s of one stream on the served model (median of `rounds`), decode only: the time of
    `tokens` new tokens less that of one (the prefill), as the served path's clock starts at the first token."""
    import torch

    tokenizer = manager.tokenizer
    with manager.holding_model() as (model, _peft):
        ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"].to(model.device)
        device = str(model.device)

        def timed(n: int) -> tuple[float, int]:
            started = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            synchronize(device)
            return time.perf_counter() - started, out.shape[1] - ids.shape[1]

        timed(4)
        rates = []
        for _ in range(rounds):
            (whole, made), (first, _one) = timed(tokens), timed(1)
            rates.append((made - 1) / (whole - first))
    return round(median(rates), 2)


def one_reply(manager, tokens: int) -> dict:
    """One greedy served reply of `tokens` tokens: its decode tok/s, time to first text and token count."""
    from llama_space.inference.generation_params import GenerationParams

    stream = manager.stream(QUESTION, GenerationParams(max_new_tokens=tokens, temperature=0.0))
    for _delta in stream:
        pass
    return {"tps": stream.tokens_per_second, "ttft": stream.time_to_first_token or 0.0,
            "tokens": stream.completion_tokens}


def served_one_stream(manager, tokens: int, rounds: int) -> float:
    """The served path's decode tok/s of one stream (median of `rounds` after a warm-up reply)."""
    one_reply(manager, 4)
    return round(median([one_reply(manager, tokens)["tps"] for _ in range(rounds)]), 2)


def burst(manager, n: int, tokens: int) -> dict:
    """`n` replies started together from `n` threads: aggregate tok/s, median per-stream decode tok/s and the
    median and worst time to first text."""
    replies: list[dict] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(n)

    def client() -> None:
        gate.wait()
        try:
            replies.append(one_reply(manager, tokens))
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"aggregate_tps": round(sum(r["tokens"] for r in replies) / wall, 2),
            "per_stream_decode_tps": round(median([r["tps"] for r in replies]), 2),
            "ttft_median_ms": round(median([r["ttft"] for r in replies]) * 1e3, 1),
            "ttft_max_ms": round(max(r["ttft"] for r in replies) * 1e3, 1)}


def streams(manager, counts: list[int], tokens: int) -> dict:
    """A burst of each size in `counts` after a warm-up burst of the largest (the engine's first batch of that
    width allocates its cache)."""
    burst(manager, max(counts), 4)
    return {str(n): burst(manager, n, tokens) for n in counts}
