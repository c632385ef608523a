"""Decode speed-ups: compiled static-cache decoding (chosen at load), CPU threads (per step).

What pays where (measured on 2 CPU cores; see BENCHMARKS.md):
- CPU: bfloat16 weights decode up to 1.7x faster than fp32 on some CPUs and no faster on others (AMX
  Xeons); model/loading.choose_cpu_dtype times both and keeps exact fp32 unless bf16 is clearly faster. A static
  cache plus torch.compile decodes no faster there, costs over a minute of compiling before the first
  reply and changes bf16 greedy text (the padded static cache sums attention in another order), so
  "auto" leaves it off on CPU. Threads matter as much: torch's OpenMP threads spin at every barrier, so
  when another process (a training job) wants the cores, decode with all cores collapses 5-10x, while
  one thread keeps its speed. `ThreadGovernor` watches the other processes' CPU use while decoding and
  switches between all cores and one thread.
- CUDA: a static cache lets `generate` compile the decode step with CUDA graphs ("reduce-overhead"),
  which removes the per-layer kernel-launch overhead that dominates batch-1 decode; "auto" turns it on.
  Attention is SDPA, or FlashAttention-2 when the `flash_attn` package is installed (model/loading.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_space.compat import compile_on_every_device
from llama_space.errors import UserError
from llama_space.inference.context import model_window

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# Static-cache length compiled for (at most the server's context). Every decode step attends over the whole static
# cache, so it is kept short, CPU's shorter; a longer request decodes eagerly over a cache of its own size rather
# than growing the static one (transformers would keep it at that size for every later request).
CACHE_CEILING = {"cuda": 4096, "cpu": 1024}


@dataclass
class DecodePlan:
    """How this model decodes: whether the decode step is compiled, why, and what warming up cost."""

    compiled: bool
    reason: str
    warmup_seconds: float = 0.0


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
    return False, f"auto: on {device_type} compiling takes 10-90 s and decodes no faster than bf16 eager"


def enable_compiled_decode(model: PreTrainedModel, backend: str = "inductor", max_context: int = 0) -> None:
    """Make `model.generate` use a static KV cache (at most `max_context` tokens long, 0: the model's window) and a
    compiled decode step (prefill stays eager)."""
    from transformers import CompileConfig

    device_type = model.device.type
    on_cuda = device_type == "cuda"
    config = CompileConfig(fullgraph=False, dynamic=False, backend=backend,
                           mode="reduce-overhead" if on_cuda else "default")
    compile_on_every_device(config, not on_cuda)
    window = max_context or model_window(model.config)
    generation_config = model.generation_config
    generation_config.cache_implementation = "static"
    generation_config.max_cache_len = min(window, CACHE_CEILING.get(device_type, CACHE_CEILING["cuda"]))
    generation_config.compile_config = config


EAGER = {"disable_compile": True, "cache_implementation": "dynamic"}  # generate kwargs: no compiled step, no static cache


def generate_overrides(model, tokens: int) -> dict:
    """Extra `generate` kwargs for a request of `tokens` (prompt plus max_new_tokens) on this request's model: LoRA
    requests and requests longer than the static cache decode eagerly, over a cache of their own size.

    A compiled graph is specialised to the modules it traced; LoRA layers and adapter switches would
    recompile it (minutes on CPU, tens of seconds on GPU) on the request that first hits each change. A longer
    request would make transformers grow the static cache for good (every later step attending over it).
    """
    config = model.generation_config
    if getattr(config, "compile_config", None) is None:
        return {}
    too_long = tokens > (getattr(config, "max_cache_len", None) or 0)
    return dict(EAGER) if too_long or hasattr(model, "peft_config") else {}


def prepare_decode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mode: str = "auto",
                   backend: str = "inductor", max_context: int = 0) -> DecodePlan:
    """Configure `model` for the fastest decode `mode` allows, compiling now so no user waits for it (a static cache
    of at most `max_context` tokens, 0: the model's window)."""
    compiled, reason = should_compile(mode, model.device.type)
    if not compiled:
        log.info("Decode step not compiled (%s)", reason)
        return DecodePlan(False, reason)
    eager = _decode_config(model)
    started = time.perf_counter()
    try:
        enable_compiled_decode(model, backend, max_context)
        _warm_up(model, tokenizer)
    except Exception as exc:  # noqa: BLE001 - no C compiler, an unsupported GPU, an inductor bug: serve eagerly
        _restore_decode_config(model, eager)
        reason = f"compiling failed ({type(exc).__name__}: {str(exc).strip()[:300]}); decoding eagerly"
        log.warning("Decode step not compiled: %s", reason)
        return DecodePlan(False, reason)
    plan = DecodePlan(True, reason, time.perf_counter() - started)
    log.info("Decode step compiled in %.1f s (%s)", plan.warmup_seconds, reason)
    return plan


_DECODE_FIELDS = ("cache_implementation", "max_cache_len", "compile_config")


def _decode_config(model: PreTrainedModel) -> dict:
    """The generation-config fields enable_compiled_decode sets, as they are now."""
    return {name: getattr(model.generation_config, name, None) for name in _DECODE_FIELDS}


def _restore_decode_config(model: PreTrainedModel, config: dict) -> None:
    """Put back the eager decode configuration and drop the compiled step `generate` may have cached."""
    for name, value in config.items():
        setattr(model.generation_config, name, value)
    for name in ("_compiled_call", "_last_compile_config"):
        model.__dict__.pop(name, None)


def _warm_up(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Two short greedy generations: the first compiles the decode step, the second checks it is reused."""
    import torch

    ids = torch.tensor([tokenizer("Hello")["input_ids"] or [tokenizer.eos_token_id]], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for _ in range(2):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                           min_new_tokens=3, do_sample=False, pad_token_id=pad)


def decode_hooks(model) -> list:
    """Per-step hooks (StoppingCriteria that never stop) for generating with `model`: CPU thread choice."""
    return [ThreadGovernor()] if model.device.type == "cpu" and os.path.exists(PROC_STAT) else []


PROC_STAT = "/proc/stat"


def cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, CPU seconds busy on the whole machine, CPU seconds used by this process)."""
    with open(PROC_STAT) as stat:
        ticks = [int(x) for x in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


class ThreadGovernor:
    """Every `interval` seconds of decoding, use the cores other processes leave free (at least one).

    Called by `generate` (or the batch engine) after every step, in the thread that runs the model, which
    is the thread whose OpenMP thread count `torch.set_num_threads` sets. A pause between calls of over
    `idle_gap` seconds and 4x the pause before (an engine idle between requests, not a slow step) starts
    a fresh window: what other processes did while we were not decoding (a client, a benchmark's other
    cases) says nothing about the cores we get now, and would cost the next reply a window on one thread.
    """

    def __init__(self, cores: int | None = None, interval: float = 0.5, sample=cpu_seconds,
                 set_threads=None, idle_gap: float = 2.0, clock=time.monotonic) -> None:
        import torch

        self.cores = cores or os.cpu_count() or 1
        self.interval, self.idle_gap = interval, idle_gap
        self._sample, self._clock = sample, clock
        self._set_threads = set_threads or torch.set_num_threads
        self._last = sample()
        self._last_call, self._pause = self._last[0], 0.0
        self.threads: int | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        now = self._clock()
        pause, self._last_call = now - self._last_call, now
        idle, self._pause = pause > max(self.idle_gap, 4 * self._pause), pause
        if idle:
            self._last = self._sample()
        elif now - self._last[0] >= self.interval:
            self.update()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def update(self) -> None:
        """Measure the other processes' CPU use since the last update and pick the thread count."""
        now = self._sample()
        wall, busy, ours = (b - a for a, b in zip(self._last, now))
        self._last = now
        if wall <= 0:
            return
        others = max(0.0, (busy - ours) / wall)  # cores the rest of the machine kept busy
        threads = min(self.cores, max(1, int(self.cores - others + 0.25)))
        if threads != self.threads:
            self._set_threads(threads)
            self.threads = threads
            log.debug("Other processes use %.1f cores: decoding with %d threads", others, threads)
