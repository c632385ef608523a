"""Chat through an external OpenAI-compatible server (vLLM, another Llama Space) instead of the in-process model.

`RemoteBackend` is a backend.ChatBackend; adapters are the remote's model ids other than the base
(vLLM serves each LoRA adapter named by `--lora-modules NAME=PATH`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx

from llama_space import adapters
from llama_space.errors import BackendError, NotFoundError, UserError
from llama_space.inference import remote_wire as wire
from llama_space.inference.admission import Admission
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.stats import ReplyStats
from llama_space.inference.tools import uses_tools

if TYPE_CHECKING:
    from llama_space.inference.tools import ToolUse
    from llama_space.settings import Settings

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # rough English average, for counting without a tokenizer
DEFAULT_CONTEXT_WINDOW = 4096  # when the remote does not say (vLLM does, as max_model_len)
TIMEOUT = httpx.Timeout(10.0, read=300.0)  # reads wait for the remote's queue as well
# Seconds one GET /models answer serves adapter look-ups: every request names a model, a remote adds
# adapters rarely, and one added is usable this long after.
MODELS_TTL = 5.0


class RemoteBackend:
    """A ChatBackend whose generation runs on an OpenAI-compatible server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.backend_url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        headers = {"Authorization": f"Bearer {settings.backend_api_key}"} if settings.backend_api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)
        self.base_name = settings.model
        self._context_window = DEFAULT_CONTEXT_WINDOW
        self._tokenizer = None
        self._cards: tuple[float, list[dict]] = (0.0, [])  # (monotonic time fetched, the remote's model cards)
        # The same bound as in-process: the remote has a queue of its own, but ours refuses at once.
        self.admission = Admission.for_settings(settings)

    def load(self) -> RemoteBackend:
        """Check the server answers and find the base model; a UserError says what is wrong."""
        cards = self._models(fresh=True)
        ids = [card["id"] for card in cards]
        if self.base_name and self.base_name not in ids:
            raise UserError(f"The chat backend at {self.url} does not serve {self.base_name!r}; "
                            f"it serves: {', '.join(ids)}.")
        base = next(c for c in cards if c["id"] == self.base_name) if self.base_name else _base_card(cards)
        self.base_name = base["id"]
        self._context_window = int(base.get("max_model_len") or DEFAULT_CONTEXT_WINDOW)
        self._tokenizer = _local_tokenizer(self.settings.model)
        log.info("Chat backend: %s at %s (adapters: %s)", self.base_name, self.url,
                 ", ".join(ids[1:]) or "none")
        return self

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    @property
    def tokenizer(self):
        """The base model's local tokenizer (dataset validation needs it); UserError when there is none."""
        if self._tokenizer is None:
            raise UserError("The chat backend is remote and no tokenizer for its base model is on this machine; "
                            "start the app with --model set to the backend's base model (Hub id or path).")
        return self._tokenizer

    @property
    def context_window(self) -> int:
        """Tokens the remote model attends to (its max_model_len when it says so)."""
        return self._context_window

    def count_tokens(self, text: str) -> int:
        """Tokens `text` encodes to: exact with a local tokenizer, else estimated from its length."""
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return max(1, -(-len(text) // CHARS_PER_TOKEN)) if text else 0

    # ---- adapters: whatever the remote serves ----------------------------------------------------
    def list_adapters(self) -> list[str]:
        """The remote's model ids other than the base (asked again once MODELS_TTL has passed)."""
        return [card["id"] for card in self._models() if card["id"] != self.base_name]

    def load_adapter(self, name: str) -> None:
        """Check the remote serves adapter `name` (it loads its own adapters)."""
        self._model_id(name)

    def unload_adapter(self, name: str) -> None:
        """Nothing to free here: the remote manages its adapters' memory."""

    def loaded_adapters(self) -> list[str]:
        """The adapters the remote serves."""
        return self.list_adapters()

    def check_adapter(self, name: str) -> str:
        """`name` if the remote serves it ("" for the base model), else NotFoundError."""
        return "" if self._model_id(name) == self.base_name else name

    def _model_id(self, adapter: str) -> str:
        if adapter in adapters.BASE_NAMES or adapter == self.base_name:
            return self.base_name
        available = self.list_adapters()
        if adapter not in available:
            raise NotFoundError(f"Unknown adapter {adapter!r}. Available at {self.url}: base, "
                            f"{', '.join(available) or 'none'} (vLLM: add it with --lora-modules NAME=PATH).")
        return adapter

    # ---- generation -----------------------------------------------------------------------------
    def stream(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
               tools: ToolUse | None = None) -> RemoteStream:
        """Start a streamed reply on the remote (a string prompt: its /completions); errors it answers with
        are raised here as UserError. Tools are refused: the remote parses its own tool calls, and a reply
        stream carries text only."""
        if params.max_new_tokens > self.settings.max_new_tokens_limit:
            raise UserError(f"max_new_tokens must be at most {self.settings.max_new_tokens_limit}")
        if tools is not None or (not isinstance(messages, str) and uses_tools(messages)):
            raise UserError("Tool calling is not supported with a remote chat backend; call the backend's own "
                            "/v1/chat/completions for tools, or serve the model in-process.")
        messages = adapters.with_trained_prompt(messages, self.settings.adapters_dir, adapter or "")
        body = wire.request_body(self._model_id(adapter or ""), messages, params)
        # No KV cache here to bound (tokens 0): the remote's memory is its own.
        return self.admission.admit(0, lambda leave: RemoteStream(self, body, on_end=leave))

    def generate(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
                 tools: ToolUse | None = None) -> str:
        """The whole reply at once."""
        return "".join(self.stream(messages, params, adapter, tools))

    def _models(self, fresh: bool = False) -> list[dict]:
        """The remote's model cards, reused for MODELS_TTL seconds unless `fresh`."""
        fetched_at, cards = self._cards
        if fresh or not cards or time.monotonic() - fetched_at >= MODELS_TTL:
            cards = self._fetch_models()
            self._cards = (time.monotonic(), cards)  # one assignment: readers in other threads see either
        return cards

    def _fetch_models(self) -> list[dict]:
        response = self._request("GET", "/models")
        self._read_whole(response)
        return wire.model_cards(wire.read_json(response, self.url), self.url)

    def _read_whole(self, response: httpx.Response) -> None:
        """Read a streamed response to its end and close it; a cut-off body is a BackendError."""
        try:
            response.read()
        except httpx.HTTPError as exc:
            raise wire.cut_off(exc, self.url) from None
        finally:
            response.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """An open (streamed) response with a 2xx status; connection problems and error answers raise UserError."""
        try:
            response = self._client.send(self._client.build_request(method, path, **kwargs), stream=True)
        except httpx.HTTPError as exc:
            raise wire.unreachable(exc, self.url) from None
        if response.is_success:
            return response
        self._read_whole(response)
        raise wire.remote_error(response, self.url)


class RemoteStream(ReplyStats):
    """Iterate for text deltas of one remote reply; `close()` (or leaving the loop) hangs up, which stops it.

    Statistics are a stats.ReplyStats: token counts are the remote's usage figures when it sends them
    (until then, or when cut short, the content chunks seen); `dropped_messages` is always 0 (the
    remote trims nothing).
    """

    def __init__(self, backend: RemoteBackend, body: dict, on_end: Callable[[], None] = lambda: None) -> None:
        """Send the request (raising UserError if the remote refuses it); `on_end` runs once when the reply
        is over, however it ends, but not when this raises."""
        texts = [body["prompt"]] if "prompt" in body else [m["content"] for m in body["messages"]]
        super().__init__(prompt_tokens=sum(backend.count_tokens(text) for text in texts))
        self._reported_tokens: int | None = None  # the remote's usage count, when it sends one
        self._url = backend.url
        path = "/completions" if "prompt" in body else "/chat/completions"
        self._response = backend._request("POST", path, json=body)
        wire.check_event_stream(self._response, self._url)
        self._on_end = on_end
        self._end_lock = threading.Lock()  # close() from another thread can race the end of __iter__

    def __iter__(self) -> Iterator[str]:
        completed = False
        try:
            for chunk in self._chunks_of_reply():
                self._read_usage(chunk.get("usage"))
                for choice in chunk.get("choices") or []:
                    delta = wire.choice_text(choice)
                    if choice.get("finish_reason"):
                        self.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                    if delta:
                        if self._reported_tokens is None:
                            self.completion_tokens += 1  # vLLM sends one token per chunk; Llama Space about a word
                        self.first_token()
                        self.first_text()
                        yield delta
            completed = True
        finally:
            self.finished()
            if not completed:
                self.finish_reason = "cancelled"
            self._hang_up()

    def _chunks_of_reply(self) -> Iterator[dict]:
        """The JSON chunks of the stream; a remote that fails or vanishes mid-reply raises BackendError."""
        try:
            yield from wire.sse_chunks(self._response.iter_lines(), self._url)
        except (httpx.HTTPError, httpx.StreamError) as exc:  # StreamError: closed before the first read
            if not self.is_finished:  # else close() hung up meanwhile: the reply ended as asked
                raise wire.cut_off(exc, self._url) from None
        except BackendError:
            if not self.is_finished:
                raise

    def _read_usage(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self._reported_tokens = usage.get("completion_tokens", self._reported_tokens)
            if self._reported_tokens is not None:
                self.completion_tokens = self._reported_tokens

    def close(self) -> None:
        """Hang up; the remote stops generating when it notices."""
        if not self.is_finished:
            self.finish_reason = "cancelled"
            self.finished()
        self._hang_up()

    def _hang_up(self) -> None:
        with self._end_lock:
            on_end, self._on_end = self._on_end, None
        try:
            self._response.close()
        finally:  # the queue place comes back even if closing the connection fails
            if on_end is not None:
                on_end()


def _base_card(cards: list[dict]) -> dict:
    """The base model: the first card that is no adapter of another (vLLM gives adapters a parent)."""
    return next((card for card in cards if not card.get("parent")), cards[0])


def _local_tokenizer(model: str):
    """The base model's tokenizer when it is on this machine (exact token counts), else None."""
    if not model:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure just means counting approximately
        log.info("No local tokenizer for %s; token counts are estimates", model)
        return None
