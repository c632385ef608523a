"""The model manager: answers, streaming, stop, trimming, adapters (embedded SmolLM2); serial order (tiny Llama)."""

import inspect
import threading
import time

import pytest

from llama_space.errors import NotFoundError, QueueFullError, UserError
from llama_space.inference.backend import ChatBackend
from llama_space.inference.fifo import FairLock
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.settings import Settings

from adapterutil import random_adapter
from conftest import MODEL_CACHE

GREEDY = GenerationParams(temperature=0, max_new_tokens=40)
FRANCE = normalize_messages([], "What is the capital of France?")


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def manager(embedded_dir, adapters_dir):
    settings = Settings(data_dir=MODEL_CACHE.parent, adapters_dir=adapters_dir, max_queue=1)
    return ModelManager(settings).load()


def test_greedy_answer_knows_paris(manager):
    assert "Paris" in manager.generate(FRANCE, GREEDY)


def test_streamed_text_equals_non_streamed(manager):
    messages = normalize_messages([], "Name three colours.")
    stream = manager.stream(messages, GREEDY)
    chunks = list(stream)
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == manager.generate(messages, GREEDY)
    assert stream.completion_tokens > 0 and stream.tokens_per_second > 0


def test_stop_ends_long_generation_and_frees_lock(manager):
    stream = manager.stream(normalize_messages([], "Write a long story about a dragon."),
                            GenerationParams(temperature=0, max_new_tokens=2000))
    iterator = iter(stream)
    for _ in range(3):
        next(iterator)
    stream.close()  # returns once generation has stopped: within a step, not after the 2,000 tokens asked for
    assert stream.finish_reason == "cancelled" and stream.completion_tokens < 50
    assert not manager._lock.locked()
    assert "Paris" in manager.generate(FRANCE, GREEDY)


def test_leaving_the_loop_stops_generation(manager):
    stream = manager.stream(FRANCE, GenerationParams(temperature=0, max_new_tokens=2000))
    for _ in stream:
        break
    assert stream.finish_reason == "cancelled" and not manager._lock.locked()


def test_stop_strings_cut_the_reply(manager):
    text = manager.generate(FRANCE, GenerationParams(temperature=0, max_new_tokens=40, stop=["Paris"]))
    assert text == "The capital of France is "


def test_trimmed_history_keeps_system_prompt_and_newest_turn(manager):
    history = []
    for i in range(6):
        history += [{"role": "user", "content": "Tell me a fact. " * 40}, {"role": "assistant", "content": "Ok. " * 40}]
    messages = normalize_messages(history, "What is the capital of France?", "Answer in one short sentence.")
    manager.settings.max_new_tokens_limit = 8000
    stream = manager.stream(messages, GenerationParams(temperature=0, max_new_tokens=manager.context_window - 300))
    stream.close()
    assert stream.dropped_messages >= 10 and stream.dropped_messages % 2 == 0
    assert stream.prompt_tokens <= 300


def test_adapter_changes_output_and_base_restores_it(manager, adapters_dir):
    random_adapter(manager.source, adapters_dir / "noisy", r=8, alpha=64, base_model=manager.base_name)
    before = manager.generate(FRANCE, GREEDY)
    assert manager.list_adapters() == ["noisy"]
    with_adapter = manager.generate(FRANCE, GREEDY, adapter="noisy")
    assert with_adapter != before
    assert manager.generate(FRANCE, GREEDY, adapter="base") == before
    assert manager.generate(FRANCE, GREEDY, adapter="noisy") == with_adapter
    manager.unload_adapter("noisy")
    assert manager.loaded_adapters() == []


def test_adapter_from_another_base_is_refused(manager, adapters_dir):
    random_adapter(manager.source, adapters_dir / "foreign", r=8, alpha=64,
                   base_model="meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(UserError, match="trained on meta-llama/Llama-3.1-8B-Instruct"):
        manager.generate(FRANCE, GREEDY, adapter="foreign")


@pytest.mark.parametrize("name", ["missing", "../etc", "/abs/path"])
def test_unknown_or_unsafe_adapter_is_refused(manager, name):
    with pytest.raises(UserError, match="adapter"):
        manager.generate(FRANCE, GREEDY, adapter=name)


def test_full_queue_refuses_at_once(manager):
    held = manager.stream(FRANCE, GenerationParams(temperature=0, max_new_tokens=2000))
    others = manager.settings.max_queue + manager.settings.concurrency - 1
    try:
        for _ in range(others):  # the other running and waiting slots, taken through the counter
            manager.admission.enter()
        started = time.perf_counter()
        with pytest.raises(QueueFullError, match="busy"):
            manager.stream(FRANCE, GREEDY)
        assert time.perf_counter() - started < 0.5
        for _ in range(others):
            manager.admission.leave()
    finally:
        held.close()
    assert "Paris" in manager.generate(FRANCE, GREEDY)


def test_compile_setting_reaches_the_decode_plan(monkeypatch, tiny_model_dir):
    import llama_space.inference.manager as manager_module

    modes = []
    monkeypatch.setattr(manager_module, "prepare_decode",
                        lambda model, tokenizer, mode, max_context: modes.append((mode, max_context)))
    for mode in ("on", "off"):
        ModelManager(Settings(model=str(tiny_model_dir), compile=mode)).load()
    assert modes == [("on", 512), ("off", 512)]  # the static cache is never longer than the context


@pytest.fixture(scope="module")
def serial(tiny_model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("serial")
    settings = Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=directory,
                        adapters_dir=directory / "adapters", concurrency=1, max_queue=8)
    return ModelManager(settings).load()


def test_serial_requests_start_in_arrival_order_and_a_stopped_waiter_never_runs(serial, monkeypatch):
    started = []
    generate = serial.model.generate

    def recording(input_ids, **kwargs):
        started.append(input_ids[0].tolist())
        return generate(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(serial.model, "generate", recording)
    params = GenerationParams(temperature=0, max_new_tokens=2)
    with serial._lock:  # the model is busy: every request below waits
        streams = [serial.stream(normalize_messages([], f"Request number {i}."), params) for i in range(8)]
        time.sleep(0.3)  # every worker is waiting for the model
        streams[3].close()  # leaves the queue while waiting
    for stream in streams:
        "".join(stream)
    order = [next(i for i, s in enumerate(streams) if s.input_ids == ids) for ids in started]
    assert order == [0, 1, 2, 4, 5, 6, 7]
    assert streams[3].finish_reason == "cancelled" and streams[3].completion_tokens == 0
    assert not serial._lock.locked() and serial.admission.in_flight == 0


def test_a_turn_given_up_just_after_it_was_granted_passes_the_lock_on():
    lock = FairLock()
    lock.acquire()
    first, second = lock.request(), lock.request()
    lock.release()  # first's turn now, but its request was stopped meanwhile
    first.cancel()
    assert second.wait(threading.Event()) and lock.locked()
    lock.release()
    assert not lock.locked()


def test_manager_is_a_chat_backend(serial):
    assert isinstance(serial, ChatBackend)
    for name in ("load", "close", "stream", "generate", "list_adapters", "check_adapter", "unload_adapter",
                 "count_tokens"):
        expected = inspect.signature(getattr(ChatBackend, name)).parameters
        assert inspect.signature(getattr(ModelManager, name)).parameters.keys() == expected.keys(), name
    assert serial.check_adapter("base") == serial.check_adapter("") == ""
    with pytest.raises(NotFoundError, match="Available: base"):
        serial.check_adapter("missing")


def test_nan_probabilities_end_a_serial_reply_clearly(serial, monkeypatch):
    """Sampling from NaN scores ends the reply with the batch engine's message, not torch's."""
    import torch

    forward = serial.model.forward

    def nan_logits(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = torch.full_like(out.logits, float("nan"))
        return out

    monkeypatch.setattr(serial.model, "forward", nan_logits)
    with pytest.raises(UserError, match="invalid probabilities"):
        serial.generate(FRANCE, GenerationParams(temperature=1.0, max_new_tokens=4))
    monkeypatch.undo()
    assert serial.generate(FRANCE, GenerationParams(temperature=0, max_new_tokens=4))
