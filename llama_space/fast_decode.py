"""Decode speed-ups chosen once at load time: attention kernel, static KV cache + torch.compile, CPU threads.

What pays where (measured on 2 CPU cores; see BENCHMARKS.md):
- CPU: bfloat16 weights (model_loading.choose_cpu_dtype) are the big win. A static cache plus
  torch.compile decodes only ~10% faster there, costs ~85 s of compiling before the first reply, and
  changes bf16 greedy text (the padded static cache sums attention in another order), so "auto" leaves
  it off on CPU. Threads matter more: libgomp's spinning threads collapse decode 5x when another process
  (a training job) wants the same cores, so the app asks for passive waiting (`quiet_openmp`).
- CUDA: a static cache lets `generate` compile the decode step with CUDA graphs ("reduce-overhead"),
  which removes the per-layer kernel-launch overhead that dominates batch-1 decode; "auto" turns it on.
  Attention is SDPA, or FlashAttention-2 when the `flash_attn` package is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# Static-cache length compiled for; a longer request grows the cache once (and recompiles once).
# Every decode step attends over the whole static cache, so CPU keeps it short.
CACHE_CEILING = {"cuda": 4096, "cpu": 1024}


@dataclass
class DecodePlan:
    """How this model decodes: whether the decode step is compiled, why, and what warming up cost."""

    compiled: bool
    reason: str
    warmup_seconds: float = 0.0


def quiet_openmp() -> None:
    """Ask OpenMP to sleep rather than spin while waiting (only effective before torch is imported).

    With spinning (libgomp's default) each of ~450 small parallel ops per token waits for a thread the
    OS has descheduled, and decode on 2 shared cores drops from ~11 to ~2 tok/s.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def attention_implementation(device: str) -> str | None:
    """The `attn_implementation` to load with: FlashAttention-2 on CUDA when installed, else SDPA."""
    if not device.startswith("cuda"):
        return None  # transformers' default, SDPA
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def should_compile(mode: str, device_type: str) -> tuple[bool, str]:
    """(compile the decode step?, why) for the `compile` setting on this device."""
    if mode not in COMPILE_MODES:
        raise UserError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "off":
        return False, "compile=off"
    if mode == "on":
        return True, "compile=on"
    if device_type == "cuda":
        return True, "auto: CUDA graphs remove per-kernel launch overhead at batch 1"
    return False, f"auto: on {device_type} compiling takes minutes and decodes about as fast as bf16 eager"


def enable_compiled_decode(model: PreTrainedModel, backend: str = "inductor") -> None:
    """Make `model.generate` use a static KV cache and a compiled decode step (prefill stays eager)."""
    from transformers import CompileConfig

    device_type = model.device.type
    on_cuda = device_type == "cuda"
    config = CompileConfig(fullgraph=False, dynamic=False, backend=backend,
                           mode="reduce-overhead" if on_cuda else "default")
    config._compile_all_devices = not on_cuda  # generate only auto-compiles on accelerators otherwise
    window = int(getattr(model.config, "max_position_embeddings", 0) or CACHE_CEILING["cuda"])
    generation_config = model.generation_config
    generation_config.cache_implementation = "static"
    generation_config.max_cache_len = min(window, CACHE_CEILING.get(device_type, CACHE_CEILING["cuda"]))
    generation_config.compile_config = config


def generate_overrides(model) -> dict:
    """Extra `generate` kwargs for this request's model: LoRA requests decode eagerly.

    A compiled graph is specialised to the modules it traced; LoRA layers and adapter switches would
    recompile it (minutes on CPU, tens of seconds on GPU) on the request that first hits each change.
    """
    compiled = getattr(model.generation_config, "compile_config", None) is not None
    return {"disable_compile": True} if compiled and hasattr(model, "peft_config") else {}


def prepare_decode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mode: str = "auto",
                   backend: str = "inductor") -> DecodePlan:
    """Configure `model` for the fastest decode `mode` allows, compiling now so no user waits for it."""
    compiled, reason = should_compile(mode, model.device.type)
    if not compiled:
        log.info("Decode step not compiled (%s)", reason)
        return DecodePlan(False, reason)
    enable_compiled_decode(model, backend)
    started = time.perf_counter()
    _warm_up(model, tokenizer)
    plan = DecodePlan(True, reason, time.perf_counter() - started)
    log.info("Decode step compiled in %.1f s (%s)", plan.warmup_seconds, reason)
    return plan


def _warm_up(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Two short greedy generations: the first compiles the decode step, the second checks it is reused."""
    import torch

    ids = torch.tensor([tokenizer("Hello")["input_ids"] or [tokenizer.eos_token_id]], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for _ in range(2):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                           min_new_tokens=3, do_sample=False, pad_token_id=pad)
