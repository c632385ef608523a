"""One streaming generation: text out through a streamer, a real stop, and the serial decoder (`generate`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from llama_space.inference.detokenize import ReplyStreamer
from llama_space.inference.fast_decode import decode_hooks, generate_overrides
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.sampling import SampledChoice, eos_token_ids, penalty_processors
from llama_space.inference.stats import ReplyStats

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


HEARTBEAT_SECONDS = 0.25  # longest gap between items of a stream's iteration, text or not

# What `begin` hands the worker once the model is free: the model to run and its adapter context.
Started = tuple[Any, Callable[[], AbstractContextManager]]


class GenerationStream(ReplyStats):
    """Iterate to get text deltas; `close()` (or leaving the loop) stops the model within one decode step.

    The consumer side (iteration, stop strings, statistics) is the same whoever decodes: `run_serial`
    (one `model.generate` per request on a worker thread) or a `batching.BatchEngine` that decodes
    many requests together. Both feed it through `put`/`end` and watch `stop_requested`.
    Statistics are a stats.ReplyStats.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, input_ids: list[int], params: GenerationParams,
                 on_end: Callable[[], None] = lambda: None, dropped_messages: int = 0) -> None:
        """A stream waiting for its decoder; `on_end` runs once when decoding ends (however it ends)."""
        super().__init__(prompt_tokens=len(input_ids), dropped_messages=dropped_messages)
        self.tokenizer = tokenizer
        self.input_ids = input_ids
        self.params = params
        self._stop = threading.Event()
        self._done = threading.Event()
        self._on_end = on_end
        self.streamer = ReplyStreamer(tokenizer, timeout=HEARTBEAT_SECONDS)
        self._error: BaseException | None = None
        self.ended_by_eos = False  # the decoder's last token ended the turn (then a full budget is no "length")

    # ---- decoder side ---------------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def record(self, generated: int) -> None:
        """Note that `generated` tokens exist so far (the decode clock starts at the first)."""
        self.completion_tokens = generated
        if generated:
            self.first_token()

    def put(self, token_id: int) -> None:
        """One more generated token."""
        import torch

        self.record(self.completion_tokens + 1)
        self.streamer.put(torch.tensor([token_id]))

    def end(self, error: BaseException | None = None) -> None:
        """Decoding is over (`error`: why it failed); wakes the consumer. Only the first call counts."""
        if self._done.is_set():
            return
        self._error = error
        self.finished()
        self.streamer.end()  # after generate's own end, if it ran: the streamer takes the first only
        try:
            self._on_end()
        finally:
            self._done.set()

    def __iter__(self) -> Iterator[str]:
        """Text deltas in whole characters; "" every HEARTBEAT_SECONDS while no text comes (waiting for the model).

        Text that may be the start of a stop string is held back until the string is complete (then it and
        everything after it is left out) or cannot be any more.
        """
        text, sent, completed = "", 0, False
        try:
            for delta in self.streamer:
                text += delta
                cut = _find_stop(text, self.params.stop, sent)
                if cut is not None:
                    if cut > sent:
                        yield self._sent(text[sent:cut])
                    self.close()
                    self.finish_reason = "stop"
                    return
                safe = len(text) - _stop_prefix(text, self.params.stop, sent)
                yield self._sent(text[sent:safe])
                sent = safe
            if sent < len(text):  # the start of a stop string that never came
                yield self._sent(text[sent:])
            completed = True
        finally:
            # Leaving the loop early (client gone, generator closed) stops the model as well.
            if completed:
                self._done.wait()
            else:
                self.close()
        if self._error is not None:
            raise self._error
        if self.completion_tokens >= self.params.max_new_tokens and not self.ended_by_eos:
            self.finish_reason = "length"

    def _sent(self, delta: str) -> str:
        if delta:
            self.first_text()
        return delta

    def close(self) -> None:
        """Stop generating (if still running) and wait for the decoder to finish its current step."""
        if not self._done.is_set():
            self._stop.set()
            self.finish_reason = "cancelled"
        self._done.wait()


class _StopAndCount:
    """StoppingCriteria that ends `generate` when the stream is stopped and records decode progress."""

    def __init__(self, stream: GenerationStream) -> None:
        self.stream = stream

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.stream.record(input_ids.shape[1] - self.stream.prompt_tokens)
        # Checked after every decode step, so a stop ends the forward passes within one step.
        # On the ids' device: generate ORs this into its own flags, and a CPU tensor would fail on CUDA.
        return torch.full((input_ids.shape[0],), self.stream.stop_requested, dtype=torch.bool,
                          device=input_ids.device)


def run_serial(stream: GenerationStream, begin: Callable[[threading.Event], Started | None],
               release: Callable[[], None], decode_on: Callable[[Callable[[], Any]], Any]) -> None:
    """Decode `stream` alone with `model.generate`, waiting for the model on a worker thread of its own.

    The worker calls `begin(stop_event)` to wait for the model (None: stopped while waiting) and
    `release()` once generate is done with it. `decode_on(work)` runs the generate call and returns its result
    (on chat's CUDA stream; for a compiled model on its one long-lived decode thread, since torch keeps compiled
    CUDA graphs per thread and would record them again in every new one).
    """
    threading.Thread(target=_generate, args=(stream, begin, release, decode_on), daemon=True).start()


def _generate(stream: GenerationStream, begin, release, decode_on) -> None:
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    error = None
    try:
        started = begin(stream._stop)
        if started is None:  # stopped while waiting for the model
            return
        try:
            model, adapter_context = started
            processors, kwargs = _decoding(stream.params, len(stream.input_ids))

            def generate() -> int:
                """The reply, and its last token; every tensor made where it runs (on chat's CUDA stream)."""
                ids = torch.tensor([stream.input_ids], device=model.device)
                with adapter_context(), torch.inference_mode():
                    out = model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), streamer=stream.streamer,
                        stopping_criteria=StoppingCriteriaList([_StopAndCount(stream), *decode_hooks(model)]),
                        pad_token_id=stream.tokenizer.pad_token_id,
                        logits_processor=LogitsProcessorList(processors),
                        **kwargs, **generate_overrides(model, ids.shape[1] + stream.params.max_new_tokens))
                return int(out[0, -1])

            stream.ended_by_eos = decode_on(generate) in eos_token_ids(model, stream.tokenizer)
        finally:
            release()
    except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
        error = exc
    finally:
        stream.end(error)


def _decoding(params: GenerationParams, prompt_length: int) -> tuple[list, dict]:
    """(logits processors, `generate` kwargs) for `params`: greedy as `generate` does it; sampled by the
    request's own sampling.BatchSampler (its own generator, as in the batch engine), whose token greedy search
    then takes, so no reply draws from torch's global generator."""
    if params.greedy:
        return penalty_processors(params, prompt_length), params.generate_kwargs()
    choose = SampledChoice(params)  # applies the penalties and warpers itself
    return [choose], replace(params, temperature=0.0, repetition_penalty=1.0).generate_kwargs()


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the first stop string in `text[start:]` begins (text before `start` holds none), or None."""
    positions = [found for found in (text.find(stop, start) for stop in stops) if found >= 0]
    return min(positions) if positions else None


def _stop_prefix(text: str, stops: list[str], start: int) -> int:
    """The length of the longest end of `text[start:]` that begins a stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text) - start), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
