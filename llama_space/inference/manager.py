"""The one object that owns the base model, its tokenizer, the loaded LoRA adapters and the generation lock."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import NotFoundError, UserError
from llama_space.inference.adapter_errors import adapter_load_failure, discard_failed_load
from llama_space.inference.admission import Admission, one_at_a_time, padded_batch
from llama_space.inference.backend import HoldsModel, SharesWeights
from llama_space.inference.batching import EngineHost, make_engine
from llama_space.inference.context import ContextPlan, kv_bytes_per_token, model_window, plan_context
from llama_space.inference.fast_decode import prepare_decode, should_compile
from llama_space.inference.fifo import FairLock, Turn
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import build_prompt, build_raw_prompt
from llama_space.inference.stream import GenerationStream, run_serial
from llama_space.model.loading import load_model
from llama_space.model.source import base_model_name, same_base

if TYPE_CHECKING:
    from llama_space.inference.tools import ToolUse
    from llama_space.settings import Settings

log = logging.getLogger(__name__)


class ModelManager(HoldsModel, SharesWeights):
    """The in-process backend.ChatBackend: loads the model once; serves streaming generation with a
    per-request adapter choice. It lends its model for forward passes and its weights to shared training jobs.

    Up to `settings.concurrency` requests decode together in one batch (batching.BatchEngine), each
    with its own adapter; a model whose decode step is compiled serves them one at a time instead,
    in the order they arrived. One first-come-first-served lock (fifo.FairLock) serialises decode
    steps (or whole serial replies) and adapter swaps. An admission counter bounds how many requests
    may be in progress or waiting, so every route (UI, Gradio API, REST, OpenAI) shares one queue.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = None
        self.tokenizer = None
        self.source = ""
        self.base_name = base_model_name(settings.model)
        self._peft = None  # PeftModel wrapping self.model once the first adapter is loaded
        self._loaded_adapters: dict[str, float] = {}  # name -> mtime of the weights loaded
        self._lock = FairLock()
        self.admission = Admission.for_settings(settings)
        self._engine = None  # BatchEngine when requests are batched
        self.context: ContextPlan | None = None  # set at load
        # A compiled model's one decode thread: the warm-up and every reply's generate run on it (see _prepare).
        self._decoder: ThreadPoolExecutor | None = None
        self._chat_stream = None  # on CUDA: the high-priority stream chat decodes on (see chat_stream)

    def load(self) -> ModelManager:
        """Load the base model and tokenizer (the slow part of start-up)."""
        self.model, self.tokenizer, self.source = load_model(
            self.settings.model, self.settings.device, self.settings.dtype, self.settings.cache_dir,
            prepare=self._prepare, offload=self.settings.offload)
        log.info("Loaded %s from %s (%s, %s)", self.base_name, self.source, self.model.dtype, self.model.device)
        host = EngineHost(lock=self._lock, model=self._current_model, prepare_adapter=self._load_adapter_locked,
                          adapter_loaded=self._loaded_adapters.__contains__, tokenizer=self.tokenizer,
                          device_context=self.chat_stream)
        self._engine = make_engine(host, self.settings.concurrency)
        self.admission.measure(padded_batch if self._engine is not None else one_at_a_time)
        self.admission.set_capacity(self.context.kv_tokens)
        return self

    def _prepare(self, model, tokenizer) -> None:
        """Size the context from the memory the weights left free, then compile the decode step for it (if asked)."""
        from llama_space.model.device_memory import free_memory

        device = model.device
        if device.type == "cuda":
            import torch

            # Lower numbers are higher priorities; torch maps one beyond the GPU's range to its highest. The GPU's
            # scheduler then starts chat's kernels before the training kernels a shared job has queued.
            self._chat_stream = torch.cuda.Stream(device, priority=-100)
        per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
        free = free_memory(f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu")
        self.context = plan_context(model_window(model.config, tokenizer), per_token, free, device.type,
                                    self.settings.max_context)
        log.info("Context: %s", self.context.reason)
        compiles, _why = should_compile(self.settings.compile, device.type)
        if not compiles:
            prepare_decode(model, tokenizer, self.settings.compile, max_context=self.context.max_context)
            return
        # torch records a compiled step's CUDA graphs per thread: warmed up and served on one thread that lives as
        # long as the manager, they are recorded once (a thread per reply recorded them again for every reply).
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._decode_on(lambda: prepare_decode(model, tokenizer, self.settings.compile,
                                               max_context=self.context.max_context))

    def close(self) -> None:
        """Stop the batch engine's or the decode thread (the weights go with the manager)."""
        if self._engine is not None:
            self._engine.shutdown()
        if self._decoder is not None:
            self._decoder.shutdown(wait=False)

    @contextmanager
    def chat_stream(self):
        """Run chat's GPU work inside on its high-priority CUDA stream (nothing to do on a CPU)."""
        if self._chat_stream is None:
            yield
            return
        import torch

        with torch.cuda.stream(self._chat_stream):
            yield

    def _decode_on(self, work):
        """Run a serial reply's generate call on chat's stream: on the decode thread when the model is compiled,
        else right here."""
        def on_stream():
            with self.chat_stream():
                return work()

        return on_stream() if self._decoder is None else self._decoder.submit(on_stream).result()

    def _current_model(self):
        """(the model to run, whether it is the PeftModel holding the adapters)."""
        return (self._peft, True) if self._peft is not None else (self.model, False)

    @property
    def batching(self) -> bool:
        """Whether concurrent requests decode together."""
        return self._engine is not None

    @property
    def context_window(self) -> int:
        """Tokens one request may use, prompt plus reply: the model's window or less (see inference/context.py)."""
        return self.context.max_context

    # ---- adapters -------------------------------------------------------------------------------
    def list_adapters(self) -> list[str]:
        """Adapters on disk that can be chosen (base excluded)."""
        return adapters.list_names(self.settings.adapters_dir)

    def check_adapter(self, name: str) -> str:
        """`name` if a request may use it ("" for the base model), else NotFoundError or UserError saying why."""
        if name in adapters.BASE_NAMES:
            return ""
        self._check_adapter(name)
        return name

    def _check_adapter(self, name: str) -> Path:
        try:
            path = adapters.adapter_path(self.settings.adapters_dir, name)
        except UserError:  # a name no adapter can have (a path, say) names none that exists
            path = None
        if path is None or not adapters.is_complete(path):
            available = ", ".join(self.list_adapters()) or "none yet"
            raise NotFoundError(f"Unknown adapter {name!r}. Available: base, {available}.")
        trained_on = adapters.read_metadata(path).get("base_model", "")
        if trained_on and not same_base(trained_on, self.base_name):
            raise UserError(f"Adapter {name!r} was trained on {trained_on}, but the loaded base model is "
                            f"{self.base_name}; start the app with --model {trained_on} to use it.")
        return path

    def _load_adapter_locked(self, name: str) -> None:
        path = self._check_adapter(name)
        mtime = (path / adapters.WEIGHTS_FILE).stat().st_mtime
        if self._loaded_adapters.get(name) == mtime:
            return
        if name in self._loaded_adapters:  # replaced on disk since we loaded it
            self._unload_adapter_locked(name)
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            else:
                self._peft.load_adapter(str(path), adapter_name=name)
        except Exception as exc:  # each cause becomes a message that says what to do
            log.exception("Loading adapter %s failed", name)
            discard_failed_load(self.model, self._peft, name)
            raise UserError(adapter_load_failure(name, self.base_name, exc)) from exc
        self._peft.eval()
        self._loaded_adapters[name] = mtime
        log.info("Loaded adapter %s", name)

    def _unload_adapter_locked(self, name: str) -> None:
        if name not in self._loaded_adapters:
            return
        del self._loaded_adapters[name]
        if self._loaded_adapters:
            self._peft.delete_adapter(name)
        else:  # PEFT keeps no usable state without adapters: go back to the plain base model
            self.model = self._peft.unload()
            self._peft = None

    def load_adapter(self, name: str) -> None:
        """Load adapter `name` from the adapters dir (no-op when already loaded and unchanged)."""
        with self._lock:
            self._load_adapter_locked(name)

    def unload_adapter(self, name: str) -> None:
        """Free adapter `name` from memory (its files stay on disk)."""
        with self._lock:
            self._unload_adapter_locked(name)

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters currently in memory."""
        return sorted(self._loaded_adapters)

    @contextmanager
    def holding_model(self, adapter: str = ""):
        """Hold the generation lock with `adapter` loaded and yield (model, is_peft) for a few forward passes;
        a PeftModel picks adapters per row by `adapter_names` ("__base__" = base), as the batch engine does."""
        with self._lock:
            if adapter not in adapters.BASE_NAMES:
                self._load_adapter_locked(adapter)
            yield self._current_model()

    def training_copy(self):
        """(model, tokenizer) for a LoRA job trained in this process: the plain base as a module tree of its own
        whose weights are the served tensors (model/sharing.py), made while no adapter swap changes them."""
        import copy

        from llama_space.model.sharing import plain_copy

        if self.model is None:
            raise UserError("The model is still loading; start the training job in a moment.")
        with self._lock:
            return plain_copy(self.model), copy.deepcopy(self.tokenizer)

    def bound_chat_tokens(self, tokens: int | None) -> None:
        """Let admitted replies hold at most `tokens` of KV cache together, beside a shared job (None lifts it)."""
        self.admission.bound_tokens(tokens)

    @contextmanager
    def _adapter_context(self, name: str):
        if self._peft is None:
            yield
        elif name in adapters.BASE_NAMES:
            with self._peft.disable_adapter():
                yield
        else:
            self._peft.set_adapter(name)
            yield

    # ---- generation -----------------------------------------------------------------------------
    def stream(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
               tools: ToolUse | None = None) -> GenerationStream:
        """Start generating a reply to `messages` (see prompting.normalize_messages; a string is raw text
        continued without the chat template) offering `tools`; iterate it for text."""
        if self.model is None:
            raise UserError("The model is still loading; try again in a moment.")
        self._check_params(params)
        adapter = adapter or ""
        if adapter not in adapters.BASE_NAMES:
            self._check_adapter(adapter)  # fail fast, before queueing
            messages = adapters.with_trained_prompt(messages, self.settings.adapters_dir, adapter)
        if isinstance(messages, str):
            prompt = build_raw_prompt(self.tokenizer, messages, self.context_window, params.max_new_tokens)
        else:
            prompt = build_prompt(self.tokenizer, messages, self.context_window, params.max_new_tokens, tools)
        tokens = len(prompt.input_ids) + params.max_new_tokens  # the most KV cache this reply can hold
        stream = self.admission.admit(tokens, lambda leave: GenerationStream(
            self.tokenizer, prompt.input_ids, params, on_end=leave, dropped_messages=prompt.dropped_messages))
        if self._engine is None:
            self._submit_serial(stream, adapter)
            return stream
        try:
            self._engine.submit(stream, adapter)
        except BaseException as exc:  # never queued: its admission place comes back with its end
            stream.end(exc)
            raise
        return stream

    def _check_params(self, params: GenerationParams) -> None:
        """UserError for what this model cannot honour: a budget over the limit, JSON modes, unknown token ids."""
        if params.max_new_tokens > self.settings.max_new_tokens_limit:
            raise UserError(f"max_new_tokens must be at most {self.settings.max_new_tokens_limit}")
        if params.response_format is not None:
            raise UserError(f"response_format {params.response_format.get('type')!r} is not supported by the "
                            "in-process model: it cannot constrain its output to JSON. Ask for JSON in the "
                            "prompt instead, or serve through a backend that can (vLLM).")
        vocab = self.model.config.vocab_size
        if params.logit_bias and max(params.logit_bias) >= vocab:
            raise UserError(f"logit_bias holds token id {max(params.logit_bias)}, but this model's vocabulary "
                            f"has ids 0 to {vocab - 1}")

    def _submit_serial(self, stream: GenerationStream, adapter: str) -> None:
        # The place in the queue is taken here, in the caller's thread: worker threads may start in any order.
        turn = self._lock.request()
        try:
            run_serial(stream, lambda stop: self._begin(turn, adapter, stop), self._lock.release, self._decode_on)
        except BaseException:  # no worker: a place nobody gives back would block the model for good
            turn.cancel()
            stream.end()
            raise

    def _begin(self, turn: Turn, adapter: str, stop: threading.Event):
        """Wait for `turn` at the model (None: `stop` was set first), load the adapter; (model, adapter context)."""
        if not turn.wait(stop):
            return None
        try:
            if adapter not in adapters.BASE_NAMES:
                self._load_adapter_locked(adapter)
        except BaseException:
            self._lock.release()
            raise
        return self._current_model()[0], lambda: self._adapter_context(adapter)

    def generate(self, messages: list[dict] | str, params: GenerationParams, adapter: str = "",
                 tools: ToolUse | None = None) -> str:
        """The whole reply at once."""
        return "".join(self.stream(messages, params, adapter, tools))

    def count_tokens(self, text: str) -> int:
        """Number of tokens `text` encodes to (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

