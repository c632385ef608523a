"""Continuous batching: requests that arrive while others are replying join their decode steps.

A decode step reads every weight of the model whatever the batch size, so on a memory-bound machine
eight sequences cost about 1.7x one step on 2 CPU cores and far less than that on a GPU: serving
requests together gives several times the throughput of serving them in turn (BENCHMARKS.md).
One engine thread owns the model between steps:

- new requests are prefilled `prefill.PREFILL_CHUNK` prompt positions per round, several short prompts in one
  forward pass or a long one chunk by chunk, with a decode step of the running rows between rounds; they
  join the batch with their first tokens;
- each step decodes one token for every request in the batch: their KV caches live in one
  DynamicCache, left-padded to a common length, with the padding masked out;
- every row's token is chosen in one batched `sampling.BatchSampler` call, each row with its own parameters,
  history and generator, and each row runs its own LoRA adapter (PEFT's mixed-adapter batches:
  `adapter_names`, "__base__" for the base model);
- a row leaves when it ends (end of sequence, token limit, stopped, or a failure of its own: its adapter
  would not load, its scores turned NaN) and the padding columns no row needs any more are cut off;
  only a failure of a shared forward pass (a decode step, a prefill of several prompts) fails every row in it.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.inference import prefill
from llama_space.inference.batch_cache import BatchCache
from llama_space.inference.fast_decode import decode_hooks
from llama_space.inference.prefill import Prefill
from llama_space.inference.sampling import BatchSampler, choose_rows, eos_token_ids

if TYPE_CHECKING:
    from llama_space.inference.fifo import FairLock
    from llama_space.inference.stream import GenerationStream

log = logging.getLogger(__name__)

PEFT_BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
IDLE_WAIT_SECONDS = 0.25  # how often an idle engine looks for stopped waiters
IDLE_EXIT_SECONDS = 10.0  # an engine thread idle this long ends (the next request starts a new one)
_ENGINES: weakref.WeakSet[BatchEngine] = weakref.WeakSet()


@dataclass
class _Row:
    """One request in the batch."""

    stream: GenerationStream
    adapter: str
    last: int  # the latest token (the batch sampler keeps the rest of the history)
    generated: int = 0


@dataclass
class EngineHost:
    """What the engine needs from the model's owner (the ModelManager)."""

    lock: FairLock  # held for each step; adapter loads and unloads take it between steps
    model: Callable[[], tuple[Any, bool]]  # (model to call, whether it is a PeftModel)
    prepare_adapter: Callable[[str], None]  # load a named adapter (under the lock); UserError if impossible
    adapter_loaded: Callable[[str], bool]
    tokenizer: Any = None
    hooks: list = field(default_factory=list)  # per-step callbacks (CPU thread governor)
    device_context: Callable[[], AbstractContextManager] = nullcontext  # entered around the engine thread's work


def supports_batching(model) -> tuple[bool, str]:
    """(can `model` be batched here?, why not)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    config = getattr(model.generation_config, "compile_config", None)
    if config is not None or model.generation_config.cache_implementation == "static":
        return False, "the decode step is compiled for one sequence at a time"
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=model.config).layers):
        return False, "the model uses sliding-window or other special cache layers"
    return True, ""


class BatchEngine:
    """Decodes up to `max_batch` streams together on one background thread."""

    def __init__(self, host: EngineHost, max_batch: int) -> None:
        self.host = host
        self.max_batch = max_batch
        self._waiting: collections.deque[tuple[GenerationStream, str]] = collections.deque()
        self._rows: list[_Row] = []
        self._joining: Prefill | None = None  # the requests being prefilled (a long prompt takes several rounds)
        self._cache = BatchCache()
        self._sampler = BatchSampler()  # the rows' sampling state, in row order
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()  # guards starting and ending the thread
        self._closing = False
        self.eos = eos_token_ids(host.model()[0], host.tokenizer)
        self.largest_batch = 0  # the most rows decoded in one step so far

    def submit(self, stream: GenerationStream, adapter: str) -> None:
        """Queue `stream` (for `adapter`, "" or a base name for none); it joins the batch when there is room
        and its prompt is prefilled."""
        with self._thread_lock:
            self._waiting.append((stream, adapter))
            self._wake.set()
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="batch-engine", daemon=True)
                try:
                    thread.start()
                except BaseException:  # no thread: the caller ends the stream, and the next submit tries again
                    self._waiting.remove((stream, adapter))
                    raise
                self._thread = thread
                _ENGINES.add(self)

    def shutdown(self, timeout: float = 5.0) -> None:
        """End the engine thread after its current step (at interpreter exit: a daemon thread killed
        inside torch would abort the process)."""
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    @property
    def active(self) -> int:
        """Rows decoding now."""
        return len(self._rows)

    # ---- the engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        idle_since = time.monotonic()
        with torch.inference_mode(), self.host.device_context():
            while not self._closing:
                self._wake.clear()
                if self._rows or self._waiting or self._joining:
                    self._work()
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_EXIT_SECONDS and self._exit_if_idle():
                    return
                else:
                    self._wake.wait(IDLE_WAIT_SECONDS)

    def _work(self) -> None:
        """One round: drop stopped requests, prefill a chunk of waiting ones, decode a step; never lets an
        error end the thread (the rows in flight fail with it, the engine goes on serving)."""
        try:
            self._end_stopped()
            with self.host.lock:
                self._admit()
                if self._rows:
                    self._step()
        except Exception as exc:
            log.exception("Batch engine failed with %d rows in flight", len(self._rows))
            for row in self._rows:
                row.stream.end(exc)
            self._rows, self._cache, self._sampler = [], BatchCache(), BatchSampler()

    def _exit_if_idle(self) -> bool:
        """End the thread unless a request arrived meanwhile (then submit saw a running thread)."""
        with self._thread_lock:
            if self._waiting:
                return False
            self._thread = None
            return True

    def _end_stopped(self) -> None:
        for stream, adapter in list(self._waiting):
            if stream.stop_requested:
                self._waiting.remove((stream, adapter))
                stream.end()
        if self._joining is not None and all(stream.stop_requested for stream in self._joining.streams):
            for stream in self._joining.streams:
                stream.end()
            self._joining = None
        kept = [i for i, row in enumerate(self._rows) if not row.stream.stop_requested]
        if len(kept) < len(self._rows):
            self._keep_rows(kept)

    def _admit(self) -> None:
        """One prefill forward pass: the next chunk of a long prompt, or several waiting prompts together
        (prefill.PREFILL_CHUNK positions at most); requests whose whole prompt is in join the batch."""
        if self._joining is None:
            self._joining = self._next_group()
        joining = self._joining
        if joining is None:
            return
        # Whatever fails for these requests (their adapter, their prompts' forward pass) ends them with the
        # error: a request that never ends keeps its client waiting and its queue place.
        try:
            logits = self._feed(joining)
        except Exception as exc:
            if not isinstance(exc, UserError):
                log.exception("Prefilling %d requests failed", len(joining.streams))
            self._joining = None
            for stream in joining.streams:
                stream.end(exc)
            return
        if logits is not None:
            self._joining = None
            self._join(joining, logits)

    def _next_group(self) -> Prefill | None:
        """Waiting requests to prefill together, in arrival order, while the batch has room: short prompts as
        many as fit in one round, or one long prompt. A request whose adapter cannot be loaded ends here."""
        streams, names = [], []
        while self._waiting and len(self._rows) + len(streams) < self.max_batch:
            stream, adapter = self._waiting[0]
            if streams and not prefill.fits([s.input_ids for s in streams] + [stream.input_ids],
                                             prefill.PREFILL_CHUNK):
                break
            self._waiting.popleft()
            if stream.stop_requested:
                stream.end()
                continue
            name = PEFT_BASE if adapter in adapters.BASE_NAMES else adapter
            try:
                if name != PEFT_BASE:
                    self.host.prepare_adapter(name)  # UserError when it cannot be loaded
            except Exception as exc:  # this request fails; the others go on
                if not isinstance(exc, UserError):
                    log.exception("Loading an adapter for a request failed")
                stream.end(exc)
                continue
            streams.append(stream)
            names.append(name)
        if not streams:
            return None
        return Prefill(streams, names, self.host.model()[0], getattr(self.host.tokenizer, "pad_token_id", None))

    def _feed(self, joining: Prefill):
        """One forward pass of `joining`'s prompts (a long prompt's adapter reloaded first if it was unloaded
        meanwhile); their last logits once the whole prompts are in."""
        for name in set(joining.adapters) - {PEFT_BASE}:
            self.host.prepare_adapter(name)  # a no-op while it stays loaded
        model, is_peft = self.host.model()
        return joining.feed(model, is_peft, prefill.PREFILL_CHUNK)

    def _join(self, joining: Prefill, logits) -> None:
        """Move prefilled requests into the batch, with their first tokens (those whose first token fails end)."""
        import torch

        firsts, failed = joining.first_tokens(logits)
        for stream, error in failed:
            stream.end(error)
        if not firsts:
            return
        start = len(self._rows)
        # The rows come first: should anything below fail, _work's handler ends these streams too.
        self._rows += [_Row(stream, adapter, stream.input_ids[-1])
                       for stream, adapter in zip(joining.streams, joining.adapters)]
        self._cache.extend(joining.cache)
        self._sampler.extend(joining.sampler)
        for row, first in zip(self._rows[start:], firsts):
            row.stream.streamer.put(torch.tensor(row.stream.input_ids))  # the prompt, as generate hands it over
            self._take(row, first)
        # A one-token reply, or end of sequence at once.
        ended = [i for i in range(start, len(self._rows)) if self._finished(self._rows[i])]
        if ended:
            self._keep_rows([i for i in range(len(self._rows)) if i not in ended])

    def _step(self) -> None:
        """One token for every row."""
        import torch

        model, is_peft = self.host.model()
        self._drop_rows_without_adapter(is_peft)
        if not self._rows:
            return
        self.largest_batch = max(self.largest_batch, len(self._rows))
        ids = torch.tensor([[row.last] for row in self._rows], device=model.device)
        mask, positions = self._cache.next_step()
        kwargs = {"adapter_names": [row.adapter for row in self._rows]} if is_peft else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    cache=self._cache.cache, use_cache=True, logits_to_keep=1, **kwargs)
        for hook in self.host.hooks:
            hook(ids, None)
        picks = choose_rows(self._sampler, out.logits[:, -1])
        for row, pick in zip(self._rows, picks):
            if isinstance(pick, Exception):
                row.stream.end(pick)
            else:
                self._take(row, pick)
        ended = [i for i, (row, pick) in enumerate(zip(self._rows, picks))
                 if isinstance(pick, Exception) or self._finished(row)]
        if ended:
            self._keep_rows([i for i in range(len(self._rows)) if i not in ended])

    def _take(self, row: _Row, token: int) -> None:
        row.last = token
        row.generated += 1
        row.stream.put(token)

    def _finished(self, row: _Row) -> bool:
        row.stream.ended_by_eos = row.last in self.eos
        return row.stream.ended_by_eos or row.generated >= row.stream.params.max_new_tokens

    def _drop_rows_without_adapter(self, is_peft: bool) -> None:
        missing = [i for i, row in enumerate(self._rows)
                   if row.adapter != PEFT_BASE and not (is_peft and self.host.adapter_loaded(row.adapter))]
        for i in missing:
            self._rows[i].stream.end(UserError(f"Adapter {self._rows[i].adapter!r} was unloaded or deleted "
                                               "while replying; choose another adapter and ask again."))
        if missing:
            self._keep_rows([i for i in range(len(self._rows)) if i not in missing])

    def _keep_rows(self, keep: list[int]) -> None:
        """Keep only rows `keep`; end the others' streams."""
        for i, row in enumerate(self._rows):
            if i not in keep:
                row.stream.end()
        self._rows = [self._rows[i] for i in keep]
        self._cache.keep(keep)
        self._sampler.keep(keep)


@atexit.register
def _shut_down_engines() -> None:
    for engine in list(_ENGINES):
        engine.shutdown()


def make_engine(host: EngineHost, max_batch: int) -> BatchEngine | None:
    """A BatchEngine for the host's model, or None (with the reason logged) when it must decode serially."""
    model, _ = host.model()
    if max_batch < 2:
        return None
    ok, why = supports_batching(model)
    if not ok:
        log.info("Requests decode one at a time: %s", why)
        return None
    host.hooks = decode_hooks(model)
    log.info("Up to %d requests decode together in one batch", max_batch)
    return BatchEngine(host, max_batch)
