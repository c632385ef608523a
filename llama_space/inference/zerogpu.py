"""ZeroGPU Spaces: every reply decodes inside a `@spaces.GPU` call, training is refused.

On a ZeroGPU Space the app's own process has no GPU. Each `spaces.GPU` call runs in a worker forked from
it that holds a GPU slice for a limited time (the call's duration counts against the visitor's daily
quota). So the backend runs the whole reply inside one such call, sized from `max_new_tokens`, and relays
the text and the final statistics back. Requests decode one at a time in the worker (the batch engine's
thread lives in the app process and would not exist in a fork). Off ZeroGPU `spaces.GPU(f) is f` and none
of this is used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llama_space.errors import UserError

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend
    from llama_space.inference.generation_params import GenerationParams
    from llama_space.inference.tools import ToolUse
    from llama_space.settings import Settings

log = logging.getLogger(__name__)

# A ZeroGPU slice decodes an 8B model at well over this; the margin keeps long replies from being cut off.
ASSUMED_TOKENS_PER_SECOND = 20
START_SECONDS = 10  # fork, moving the weights onto the GPU, prefill
MAX_SECONDS = 120  # the longest call a free visitor's quota allows at once

TRAINING_REFUSED = ("Training needs a GPU of its own, and this Space runs on ZeroGPU, which lends a GPU for "
                    "seconds per request. In the Space's Settings > Hardware pick a dedicated GPU (an L4 or "
                    "A10G with 24 GB trains Llama-3.1-8B with LoRA beside chat, or with QLoRA), or train "
                    "on your own machine and upload the adapter.")


def prepare(settings: Settings) -> None:
    """On a ZeroGPU Space, import `spaces` now: it must patch torch before anything initialises CUDA."""
    if settings.zero_gpu:
        import spaces  # noqa: F401


def worker_settings(settings: Settings) -> Settings:
    """The settings the in-process model runs with on ZeroGPU: replies decode one at a time (the batch engine's
    thread would not exist in a forked worker), and nothing is compiled, as compiling and warming up would run
    on the GPU in the app's own process, outside any `spaces.GPU` call."""
    from dataclasses import replace

    if settings.compile == "on":
        log.warning("compile=on is ignored on ZeroGPU: the decode step cannot be compiled outside a GPU call")
    return replace(settings, concurrency=1, compile="off")


def reply_seconds(max_new_tokens: int) -> int:
    """The GPU time to ask for a reply of up to `max_new_tokens` tokens."""
    return min(MAX_SECONDS, START_SECONDS + -(-max_new_tokens // ASSUMED_TOKENS_PER_SECOND))


def refuse_training(settings: Settings) -> None:
    """UserError saying which hardware to pick, on a ZeroGPU Space."""
    if settings.zero_gpu:
        raise UserError(TRAINING_REFUSED)


class RelayedStream:
    """A reply decoded inside a `spaces.GPU` call: text pieces, then the statistics the worker sent last."""

    def __init__(self, pieces: Iterator[tuple[str, Any]]) -> None:
        self._pieces = pieces
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self.time_to_first_token: float | None = None
        self.dropped_messages = 0
        self.tokens_per_second = 0.0

    def __iter__(self) -> Iterator[str]:
        for kind, value in self._pieces:
            if kind == "text":
                yield value
            elif kind == "stats":
                self.__dict__.update(value)
            else:  # "error": a UserError the worker raised, rebuilt here (exceptions do not cross as such)
                raise _rebuild(*value)

    def close(self) -> None:
        self._pieces.close()


def _rebuild(class_path: str, message: str) -> UserError:
    """The UserError subclass named `class_path` (module:qualname) with `message`; a plain UserError otherwise."""
    import importlib

    module, _, name = class_path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = UserError
    return cls(message) if isinstance(cls, type) and issubclass(cls, UserError) else UserError(message)


class ZeroGPUBackend:
    """The in-process backend with each reply run inside `spaces.GPU`; the rest of backend.ChatBackend is the
    inner backend's, forwarded one by one. It declares none of the inner backend's other abilities: outside a
    GPU call the app process has no GPU to run the model on, so it lends the model to no evaluation, and
    training is refused on ZeroGPU (refuse_training)."""

    STATS = ("prompt_tokens", "completion_tokens", "finish_reason", "time_to_first_token", "dropped_messages",
             "tokens_per_second")

    def __init__(self, inner: ChatBackend) -> None:
        import spaces

        self.inner = inner
        # Arguments are pickled into the worker; the model travels with the fork instead.
        self._decode = spaces.GPU(self._decode_in_worker,
                                  duration=lambda messages, params, *_: reply_seconds(params.max_new_tokens))

    @property
    def settings(self) -> Settings:
        return self.inner.settings

    @property
    def base_name(self) -> str:
        return self.inner.base_name

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    def load(self) -> ZeroGPUBackend:
        self.inner.load()
        return self

    def close(self) -> None:
        self.inner.close()

    def list_adapters(self) -> list[str]:
        return self.inner.list_adapters()

    def check_adapter(self, name: str) -> str:
        return self.inner.check_adapter(name)

    def unload_adapter(self, name: str) -> None:
        self.inner.unload_adapter(name)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def stream(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
               tools: ToolUse | None = None) -> RelayedStream:
        """Check what can be checked here, then decode inside one GPU call."""
        self.inner.check_adapter(adapter or "")
        return RelayedStream(self._decode(messages, params, adapter, tools))

    def generate(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
                 tools: ToolUse | None = None) -> str:
        return "".join(self.stream(messages, params, adapter, tools))

    def _decode_in_worker(self, messages: list[dict] | str, params: GenerationParams, adapter: str,
                          tools: ToolUse | None) -> Iterator[tuple[str, Any]]:
        try:
            stream = self.inner.stream(messages, params, adapter, tools)
            try:
                for piece in stream:
                    yield "text", piece
            finally:
                stream.close()
        except UserError as exc:
            yield "error", (f"{type(exc).__module__}:{type(exc).__qualname__}", str(exc))
            return
        yield "stats", {name: getattr(stream, name) for name in self.STATS}
