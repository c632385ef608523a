"""One streaming generation: `model.generate` on a worker thread, text out through a streamer, a real stop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from llama_space.fast_decode import decode_hooks, generate_overrides
from llama_space.params import GenerationParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


HEARTBEAT_SECONDS = 0.25  # longest gap between items of a stream's iteration, text or not

# What `begin` hands the worker once the model is free: the model to run and its adapter context.
Started = tuple[Any, Callable[[], AbstractContextManager]]


class _StopAndCount:
    """StoppingCriteria that ends generation when `stop_event` is set and records decode progress."""

    def __init__(self, stop_event: threading.Event, prompt_len: int) -> None:
        self.stop_event = stop_event
        self.prompt_len = prompt_len
        self.generated = 0
        self.first_token_at: float | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.generated = input_ids.shape[1] - self.prompt_len
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        # Checked after every decode step, so a stop ends the forward passes within one step.
        # On the ids' device: generate ORs this into its own flags, and a CPU tensor would fail on CUDA.
        return torch.full((input_ids.shape[0],), self.stop_event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class GenerationStream:
    """Iterate to get text deltas; `close()` (or leaving the loop) stops the model within one decode step.

    After iteration: `prompt_tokens`, `completion_tokens`, `finish_reason` ("stop" | "length" | "cancelled"),
    `time_to_first_token`, `tokens_per_second`, `dropped_messages`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, input_ids: list[int], params: GenerationParams,
                 begin: Callable[[threading.Event], Started | None], finish: Callable[[bool], None],
                 dropped_messages: int = 0) -> None:
        """Start the worker; it calls `begin(stop_event)` to wait for the model (None: stopped while waiting)
        and `finish(began)` when done."""
        from transformers import TextIteratorStreamer

        self.prompt_tokens = len(input_ids)
        self.dropped_messages = dropped_messages
        self.params = params
        self.finish_reason = "stop"
        self.time_to_first_token: float | None = None
        self._stop = threading.Event()
        self._criteria = _StopAndCount(self._stop, len(input_ids))
        # The timeout makes iteration yield "" while waiting, so consumers can be cancelled meanwhile.
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                              timeout=HEARTBEAT_SECONDS)
        self._error: BaseException | None = None
        self._started = time.perf_counter()
        self._finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(input_ids, begin, finish), daemon=True)
        self._thread.start()

    def _run(self, input_ids, begin, finish) -> None:
        import torch
        from transformers import StoppingCriteriaList

        started = None
        try:
            started = begin(self._stop)
            if started is None:  # stopped while waiting for the model
                return
            model, adapter_context = started
            ids = torch.tensor([input_ids], device=model.device)
            if self.params.seed is not None:
                torch.manual_seed(self.params.seed)
            with adapter_context(), torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=self._streamer,
                               stopping_criteria=StoppingCriteriaList([self._criteria, *decode_hooks(model)]),
                               pad_token_id=self._streamer.tokenizer.pad_token_id,
                               **self.params.generate_kwargs(), **generate_overrides(model))
        except BaseException as exc:  # re-raised in the consuming thread
            self._error = exc
        finally:
            self._streamer.end()  # a second end after generate's own is harmless: iteration stops at the first
            self._finished_at = time.perf_counter()
            finish(started is not None)

    @property
    def completion_tokens(self) -> int:
        return self._criteria.generated

    @property
    def tokens_per_second(self) -> float:
        end = self._finished_at or time.perf_counter()
        first = self._criteria.first_token_at
        if first is None or self.completion_tokens < 2 or end <= first:
            return 0.0
        return (self.completion_tokens - 1) / (end - first)

    def __iter__(self) -> Iterator[str]:
        """Text deltas; "" every HEARTBEAT_SECONDS while no text comes (waiting for the model)."""
        text, completed = "", False
        try:
            for delta in self._deltas():
                if self.time_to_first_token is None and delta:
                    self.time_to_first_token = time.perf_counter() - self._started
                text += delta
                cut = _find_stop(text, self.params.stop)
                if cut is not None:
                    if cut > len(text) - len(delta):
                        yield delta[:cut - (len(text) - len(delta))]
                    self.close()
                    self.finish_reason = "stop"
                    return
                yield delta
            completed = True
        finally:
            # Leaving the loop early (client gone, generator closed) stops the model as well.
            if completed:
                self._thread.join()
            else:
                self.close()
        if self._error is not None:
            raise self._error
        if self.completion_tokens >= self.params.max_new_tokens:
            self.finish_reason = "length"

    def _deltas(self) -> Iterator[str]:
        while True:
            try:
                yield next(self._streamer)
            except StopIteration:
                return
            except queue.Empty:
                yield ""

    def close(self) -> None:
        """Stop generating (if still running) and wait for the worker to finish its current step."""
        if self._thread.is_alive():
            self._stop.set()
            self.finish_reason = "cancelled"
        self._thread.join()


def _find_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s in text]
    return min(positions) if positions else None
