"""The one interface every surface (UI, Gradio API, REST, /v1) chats through, the abilities a backend may
declare beyond it, and the choice of implementation.

An ability is a runtime-checkable protocol that a backend class names among its bases and callers test with
`isinstance`: HoldsModel (the model runs in this process and lends it for forward passes) and SharesWeights
(a training job may train on the served weights). manager.ModelManager declares both; remote.RemoteBackend and
zerogpu.ZeroGPUBackend neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from llama_space.inference.generation_params import GenerationParams
    from llama_space.inference.tools import ToolUse
    from llama_space.settings import Settings


@runtime_checkable
class ReplyStream(Protocol):
    """One reply being generated: iterate for text deltas ("" while waiting), `close()` stops it.

    Statistics (stats.ReplyStats) are read off it: prompt_tokens, completion_tokens, finish_reason
    ("stop" | "length" | "cancelled"), time_to_first_token, tokens_per_second, dropped_messages.
    A problem found once the stream exists is raised from the iteration (a UserError when the user
    can fix it).
    """

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    time_to_first_token: float | None
    dropped_messages: int

    @property
    def tokens_per_second(self) -> float: ...

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class ChatBackend(Protocol):
    """What serves replies: the in-process model (manager.ModelManager) or a remote server (remote.RemoteBackend).

    Every method raises UserError (or a subclass: errors.NotFoundError, errors.QueueFullError,
    errors.BackendError) for anything the user or operator can fix. Replies go through the backend's
    admission.Admission (the request queue shared by every route).
    """

    settings: Settings
    base_name: str  # the base model's id, as clients name it

    def load(self) -> ChatBackend:
        """Get ready to serve (load weights, or check the remote answers); returns self."""

    def close(self) -> None:
        """Free what load() took."""

    def stream(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
               tools: ToolUse | None = None) -> ReplyStream:
        """Start a reply to `messages` ([{role, content}], ending with a user turn or tool results) with
        `adapter` ("" = base), offering `tools` (the reply text then holds any calls in the model's own
        form, after ToolUse.prefill). A string is a raw prompt that the reply continues, with no chat template
        (/v1/completions)."""

    def generate(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
                 tools: ToolUse | None = None) -> str:
        """The whole reply at once."""

    def list_adapters(self) -> list[str]:
        """Adapter names a request may choose (the base excluded)."""

    def check_adapter(self, name: str) -> str:
        """`name` if a request may use it ("" for the base model), else NotFoundError listing what exists."""

    def unload_adapter(self, name: str) -> None:
        """Free adapter `name` from memory (its files stay)."""

    def count_tokens(self, text: str) -> int:
        """Tokens `text` encodes to (no special tokens)."""

    @property
    def context_window(self) -> int:
        """Tokens the model attends to (prompt plus reply)."""

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (dataset validation needs it); UserError when there is none."""


@runtime_checkable
class HoldsModel(Protocol):
    """A backend whose model runs in this process and is lent for forward passes (evaluation's loss)."""

    def holding_model(self, adapter: str = "") -> AbstractContextManager[tuple[Any, bool]]:
        """Hold the model with `adapter` loaded ("" = base) while the block runs; yields (model, is_peft): a
        PeftModel picks adapters per row by `adapter_names`."""


@runtime_checkable
class SharesWeights(Protocol):
    """A backend serving weights in this process that a training job may train on beside chat (placement
    shared; training/shared_runs.py)."""

    model: Any  # the served base model: its config, device and dtype size a job that shares it

    def training_copy(self) -> tuple[Any, Any]:
        """(model, tokenizer) to train a LoRA on: the plain base as a module tree of its own whose weights are the
        served tensors (model/sharing.py)."""

    def bound_chat_tokens(self, tokens: int | None) -> None:
        """Let chat's admitted replies hold at most `tokens` of KV cache together, beside a job (None lifts it)."""


def make_backend(settings: Settings) -> ChatBackend:
    """The chat backend the settings ask for: the remote server at backend_url, else the in-process model."""
    if settings.backend_url:
        from llama_space.inference.remote import RemoteBackend

        return RemoteBackend(settings)
    from llama_space.inference.manager import ModelManager

    if settings.zero_gpu:
        from llama_space.inference.zerogpu import ZeroGPUBackend, worker_settings

        return ZeroGPUBackend(ModelManager(worker_settings(settings)))
    return ModelManager(settings)
