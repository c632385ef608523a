"""Continuous batching: requests decoded together reply exactly as they would alone, each with its own
parameters and adapter; stopping, finishing and failing one row leaves the others untouched.

float32 throughout: in bfloat16 a row's greedy text may depend on what it is batched with.
"""

import threading
import time

import pytest

from llama_space.errors import UserError
from llama_space.inference.manager import ModelManager
from llama_space.inference.params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.settings import Settings

from adapterutil import random_adapter
from conftest import MODEL_CACHE

PROMPTS = ["What is the capital of France?", "Name three colours.", "Tell me a joke about cats.",
           "Explain rain briefly in two sentences, please.", "Hi", "Count to five."]
GREEDY = GenerationParams(temperature=0, max_new_tokens=24)


def ask(prompt: str) -> list[dict]:
    return normalize_messages([], prompt)


def together(manager, jobs: list[tuple[str, GenerationParams, str]]) -> list[str]:
    """Start every (prompt, params, adapter) at once; the replies, in order."""
    streams = [manager.stream(ask(prompt), params, adapter) for prompt, params, adapter in jobs]
    replies = [""] * len(streams)

    def read(i: int) -> None:
        replies[i] = "".join(streams[i])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, tiny_model_dir):
    directory = tmp_path_factory.mktemp("adapters")
    random_adapter(tiny_model_dir, directory / "one", seed=1)
    random_adapter(tiny_model_dir, directory / "two", seed=2)
    return directory


def tiny_manager(model_dir, adapters_dir, concurrency: int) -> ModelManager:
    settings = Settings(model=str(model_dir), dtype="float32", adapters_dir=adapters_dir,
                        concurrency=concurrency, max_queue=8)
    return ModelManager(settings).load()


@pytest.fixture(scope="module")
def serial(tiny_model_dir, adapters_dir):
    manager = tiny_manager(tiny_model_dir, adapters_dir, concurrency=1)
    assert not manager.batching
    return manager


@pytest.fixture(scope="module")
def batched(tiny_model_dir, adapters_dir):
    manager = tiny_manager(tiny_model_dir, adapters_dir, concurrency=4)
    assert manager.batching
    return manager


def test_batched_greedy_replies_equal_serial_ones(serial, batched):
    jobs = [(prompt, GREEDY, "") for prompt in PROMPTS]
    expected = [serial.generate(ask(prompt), GREEDY) for prompt in PROMPTS]
    assert together(batched, jobs) == expected
    assert batched._engine.largest_batch == 4  # six requests, four at a time: the rest joined as rows left


def test_rows_keep_their_own_adapter_and_sampling(serial, batched):
    seeded = GenerationParams(temperature=0.9, top_p=0.8, top_k=40, repetition_penalty=1.3, seed=7,
                              max_new_tokens=20)
    jobs = [(PROMPTS[0], GREEDY, "one"), (PROMPTS[0], GREEDY, "base"), (PROMPTS[0], GREEDY, "two"),
            (PROMPTS[1], seeded, "one")]
    expected = [serial.generate(ask(prompt), params, adapter) for prompt, params, adapter in jobs]
    assert len(set(expected[:3])) == 3  # the adapters really change the reply
    batched._engine.largest_batch = 0
    assert together(batched, jobs) == expected
    assert batched._engine.largest_batch >= 2  # different adapters really shared decode steps


def test_short_and_long_replies_in_one_batch(serial, batched):
    jobs = [(PROMPTS[2], GenerationParams(temperature=0, max_new_tokens=n), "") for n in (1, 40, 3, 17)]
    expected = [serial.generate(ask(prompt), params) for prompt, params, _ in jobs]
    streams = [batched.stream(ask(prompt), params) for prompt, params, _ in jobs]
    assert ["".join(stream) for stream in streams] == expected
    assert [stream.completion_tokens for stream in streams] == [1, 40, 3, 17]
    assert all(stream.finish_reason == "length" for stream in streams)
    assert batched._engine.active == 0 and batched._engine._cache.width == 0


def test_stopping_one_row_leaves_the_others_exact(serial, batched):
    long = GenerationParams(temperature=0, max_new_tokens=400)
    expected = serial.generate(ask(PROMPTS[1]), GREEDY)
    victim = batched.stream(ask(PROMPTS[0]), long)
    survivor = batched.stream(ask(PROMPTS[1]), GREEDY)
    iterator = iter(victim)
    while victim.completion_tokens < 3:
        next(iterator)
    started = time.perf_counter()
    victim.close()
    assert time.perf_counter() - started < 2.0
    assert victim.finish_reason == "cancelled" and victim.completion_tokens < 400
    assert "".join(survivor) == expected


def test_padding_is_cut_when_the_long_prompt_leaves(batched):
    long_prompt = batched.stream(ask("Tell me everything about the history of Rome. " * 8),
                                 GenerationParams(temperature=0, max_new_tokens=2))
    short_prompt = batched.stream(ask("Hi"), GenerationParams(temperature=0, max_new_tokens=300))
    iterator = iter(short_prompt)
    while short_prompt.completion_tokens < 10:
        next(iterator)
    "".join(long_prompt)
    engine = batched._engine
    with batched._lock:  # between steps: the cache holds only the short row, without the long row's padding
        cache = engine._cache
        assert engine.active <= 1 and cache.width <= short_prompt.prompt_tokens + short_prompt.completion_tokens
        assert cache.mask is None or bool(cache.mask.all())
    short_prompt.close()


def test_adapter_unloaded_mid_reply_fails_only_its_row(serial, batched):
    expected = serial.generate(ask(PROMPTS[3]), GenerationParams(temperature=0, max_new_tokens=60))
    doomed = batched.stream(ask(PROMPTS[0]), GenerationParams(temperature=0, max_new_tokens=400), "two")
    other = batched.stream(ask(PROMPTS[3]), GenerationParams(temperature=0, max_new_tokens=60))
    iterator = iter(doomed)
    while doomed.completion_tokens < 2:
        next(iterator)
    batched.unload_adapter("two")
    with pytest.raises(UserError, match="'two' was unloaded or deleted"):
        list(iterator)
    assert "".join(other) == expected
    assert batched.generate(ask(PROMPTS[0]), GREEDY, "two")  # loads again on the next request


def test_compiled_decode_or_one_at_a_time_serves_serially(tiny_model_dir, adapters_dir, monkeypatch):
    from llama_space.inference import batching

    assert not tiny_manager(tiny_model_dir, adapters_dir, concurrency=1).batching
    monkeypatch.setattr(batching, "supports_batching", lambda model: (False, "compiled"))
    manager = tiny_manager(tiny_model_dir, adapters_dir, concurrency=4)
    assert not manager.batching and manager.generate(ask("Hi"), GREEDY)


def test_embedded_model_batched_answers_match(embedded_dir):
    """The real model: four questions decoded together answer as they do one by one."""
    settings = Settings(data_dir=MODEL_CACHE.parent, dtype="float32", concurrency=4)
    manager = ModelManager(settings).load()
    params = GenerationParams(temperature=0, max_new_tokens=32)
    alone = [manager.generate(ask(prompt), params) for prompt in PROMPTS[:4]]
    assert "Paris" in alone[0]
    assert together(manager, [(prompt, params, "") for prompt in PROMPTS[:4]]) == alone
    assert manager._engine.largest_batch == 4


def test_a_failing_step_fails_its_rows_and_the_engine_goes_on(batched, monkeypatch):
    engine = batched._engine
    healthy = engine.host.model

    class Broken:
        """The model, except that decode steps (one new token per row) fail."""

        def __init__(self, model):
            self.model, self.device, self.config = model, model.device, model.config

        def __call__(self, **kwargs):
            if kwargs["input_ids"].shape[1] == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return self.model(**kwargs)

    monkeypatch.setattr(engine.host, "model", lambda: (Broken(healthy()[0]), healthy()[1]))
    streams = [batched.stream(ask(prompt), GREEDY) for prompt in PROMPTS[:2]]
    for stream in streams:
        with pytest.raises(RuntimeError, match="simulated"):
            list(stream)
    monkeypatch.undo()
    assert batched.generate(ask("Hi"), GREEDY)
    assert engine._thread is not None and engine._thread.is_alive()
