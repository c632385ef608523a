"""Continuous batching: requests decoded together reply exactly as they would alone, each with its own
parameters and adapter; stopping, finishing and failing one row leaves the others untouched.

float32 throughout: in bfloat16 a row's greedy text may depend on what it is batched with.
"""

import itertools
import threading
import time

import pytest

from llama_space.errors import UserError
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.settings import Settings

from adapterutil import random_adapter
from conftest import MODEL_CACHE

PROMPTS = ["What is the capital of France?", "Name three colours.", "Tell me a joke about cats.",
           "Explain rain briefly in two sentences, please.", "Hi", "Count to five."]
GREEDY = GenerationParams(temperature=0, max_new_tokens=24)


def ask(prompt: str) -> list[dict]:
    return normalize_messages([], prompt)


def together(manager, jobs: list[tuple[str, GenerationParams, str]]) -> list[str | BaseException]:
    """Start every (prompt, params, adapter) at once; the replies, in order."""
    return outcomes([manager.stream(ask(prompt), params, adapter) for prompt, params, adapter in jobs])


def outcome(stream) -> str | BaseException:
    """The stream's whole reply, or the error it ended with."""
    try:
        return "".join(stream)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def outcomes(streams) -> list[str | BaseException]:
    """Read every stream on its own thread (as concurrent clients do); each one's outcome, in order."""
    results: list = [None] * len(streams)

    def read(i: int) -> None:
        results[i] = outcome(streams[i])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def arriving_together(manager, jobs: list[tuple[str, GenerationParams, str]]) -> tuple[list, list[int]]:
    """Queue every (prompt, params, adapter) while the engine waits for the model, so they arrive together;
    (the streams, the rows of each prefill forward pass that ran for them)."""
    engine = manager._engine
    model = engine.host.model
    prefills: list[int] = []

    class Counted:
        def __init__(self, inner):
            self.inner, self.device, self.config = inner, inner.device, inner.config

        def __call__(self, **kwargs):
            if kwargs["cache"] is not engine._cache.cache:  # not the running rows' cache: a prefill
                prefills.append(kwargs["input_ids"].shape[0])
            return self.inner(**kwargs)

    engine.host.model = lambda: (Counted(model()[0]), model()[1])
    try:
        with manager._lock:  # the engine cannot start a prefill until all are queued
            streams = [manager.stream(ask(prompt), params, adapter) for prompt, params, adapter in jobs]
        deadline = time.monotonic() + 60
        while not all(stream.completion_tokens or stream._done.is_set() for stream in streams):
            assert time.monotonic() < deadline, "the requests never joined the batch"
            time.sleep(0.01)
    finally:
        engine.host.model = model
    return streams, prefills


def started(stream, tokens: int = 2):
    """`stream`, once it has produced `tokens` tokens (so it is decoding in the batch)."""
    deadline = time.monotonic() + 60
    while stream.completion_tokens < tokens:
        assert time.monotonic() < deadline, "the stream never started decoding"
        time.sleep(0.01)
    return stream


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


def test_prompts_arriving_together_are_prefilled_in_one_forward_pass(serial, batched):
    """Four prompts of different lengths, with different adapters and sampling, arrive together: one prefill
    forward pass of four rows admits them all, and each replies as it would alone."""
    seeded = GenerationParams(temperature=0.9, top_p=0.8, top_k=40, repetition_penalty=1.3, seed=5,
                              max_new_tokens=20)
    jobs = [(PROMPTS[3], GREEDY, "one"), (PROMPTS[4], GREEDY, ""), (PROMPTS[2], GREEDY, "two"),
            (PROMPTS[1], seeded, "one")]
    expected = [serial.generate(ask(prompt), params, adapter) for prompt, params, adapter in jobs]
    streams, prefills = arriving_together(batched, jobs)
    assert len({stream.prompt_tokens for stream in streams}) == 4
    assert outcomes(streams) == expected
    assert prefills == [4]


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


def test_chat_never_touches_the_global_rng_and_seeded_replies_repeat(serial, batched):
    """A training job in this process draws dropout and checkpointing's replays from torch's global generator:
    sampled and seeded replies, served one at a time or batched, leave it exactly as it was."""
    import torch

    sampled = GenerationParams(temperature=0.9, max_new_tokens=16)
    seeded = GenerationParams(temperature=0.9, top_p=0.8, top_k=40, seed=11, max_new_tokens=16)
    jobs = [(PROMPTS[0], sampled, ""), (PROMPTS[1], seeded, "one"), (PROMPTS[2], sampled, "two"),
            (PROMPTS[1], seeded, "one")]
    state = torch.get_rng_state()
    replies = {manager: together(manager, jobs) + [manager.generate(ask(PROMPTS[1]), seeded, "one")]
               for manager in (serial, batched)}
    assert torch.equal(torch.get_rng_state(), state)
    for texts in replies.values():
        assert all(isinstance(text, str) and text for text in texts)
        assert texts[1] == texts[3] == texts[4]  # seeded: the same reply whatever ran beside it
    torch.rand(1000)  # whatever else moves the global generator does not change a seeded reply
    assert serial.generate(ask(PROMPTS[1]), seeded, "one") == replies[serial][1] == replies[batched][1]


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
    """The real model: four questions of different lengths, prefilled together in one forward pass and decoded
    together, answer as they do one by one."""
    settings = Settings(data_dir=MODEL_CACHE.parent, dtype="float32", concurrency=4)
    manager = ModelManager(settings).load()
    params = GenerationParams(temperature=0, max_new_tokens=32)
    prompts = [PROMPTS[0], "Hi", PROMPTS[3], "Name three colours of the rainbow, then say why the sky is blue."]
    alone = [manager.generate(ask(prompt), params) for prompt in prompts]
    assert "Paris" in alone[0]
    streams, prefills = arriving_together(manager, [(prompt, params, "") for prompt in prompts])
    assert len({stream.prompt_tokens for stream in streams}) == 4
    assert outcomes(streams) == alone
    assert prefills == [4] and manager._engine.largest_batch == 4


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


def test_a_row_with_invalid_probabilities_fails_alone(serial, batched, monkeypatch):
    """Rows whose sampling turns NaN (at their first token, or mid-reply) end with a clear error; the rows
    decoding with them reply exactly as they would alone."""
    import collections

    from llama_space.inference.sampling import BatchSampler

    penalized = BatchSampler._penalized
    choices: collections.Counter = collections.Counter()  # per request (its params), the choices made so far

    def poisoned(self, scores):
        """The scores of requests seeded 101 (from their first choice) and 102 (from their fourth) turn NaN."""
        scores = penalized(self, scores)
        for i, params in enumerate(self.params):
            choices[id(params)] += 1
            if choices[id(params)] >= {101: 1, 102: 4}.get(params.seed, 10**9):
                scores[i] = float("nan")
        return scores

    monkeypatch.setattr(BatchSampler, "_penalized", poisoned)
    long = GenerationParams(temperature=0, max_new_tokens=40)
    expected = [serial.generate(ask(prompt), long) for prompt in PROMPTS[:2]]
    healthy = [started(batched.stream(ask(prompt), long)) for prompt in PROMPTS[:2]]
    poisoned = [batched.stream(ask(PROMPTS[2]), GenerationParams(temperature=0.8, seed=seed, max_new_tokens=40))
                for seed in (101, 102)]
    *replies, at_first, mid_reply = outcomes(healthy + poisoned)
    assert replies == expected
    for error in (at_first, mid_reply):
        assert isinstance(error, UserError) and "invalid probabilities (NaN/inf)" in str(error)
    assert poisoned[0].completion_tokens == 0 and poisoned[1].completion_tokens == 3
    assert batched.generate(ask(PROMPTS[2]), GenerationParams(temperature=0.8, seed=5, max_new_tokens=8))


def test_a_row_whose_sampler_raises_fails_alone(serial, batched, monkeypatch):
    """A batch whose choice raises chooses row by row, so only the row it raises for ends."""
    import collections

    from llama_space.inference.sampling import BatchSampler

    sample, record = BatchSampler._sample, BatchSampler._record
    chosen: collections.Counter = collections.Counter()  # per request (its params), the tokens chosen so far

    def raising(self, scores):
        """Raises at the third token of the request seeded 103, in any batch that holds it."""
        if any(params.seed == 103 and chosen[id(params)] == 2 for params in self.params):
            raise RuntimeError("sampler broke (simulated)")
        return sample(self, scores)

    def counted(self, tokens):
        for params in self.params:
            chosen[id(params)] += 1
        record(self, tokens)

    monkeypatch.setattr(BatchSampler, "_sample", raising)
    monkeypatch.setattr(BatchSampler, "_record", counted)
    expected = serial.generate(ask(PROMPTS[1]), GREEDY)
    healthy = started(batched.stream(ask(PROMPTS[1]), GREEDY))
    doomed = batched.stream(ask(PROMPTS[3]), GenerationParams(temperature=0.8, seed=103, max_new_tokens=400))
    reply, error = outcomes([healthy, doomed])
    assert reply == expected
    assert isinstance(error, RuntimeError) and "simulated" in str(error) and doomed.completion_tokens == 2


def test_a_sampler_that_cannot_be_built_ends_only_its_stream(serial, batched, monkeypatch):
    """A failure while admitting a request (building its sampler) ends that request with the error and gives
    back its queue place; the rows decoding meanwhile, and the request prefilled with it, reply as they would
    alone."""
    from llama_space.inference.sampling import BatchSampler

    for_row = BatchSampler.for_row

    def unbuildable(params, *args):
        if params.seed == 104:
            raise ValueError("sampler cannot be built (simulated)")
        return for_row(params, *args)

    monkeypatch.setattr(BatchSampler, "for_row", unbuildable)
    long = GenerationParams(temperature=0, max_new_tokens=40)
    expected = [serial.generate(ask(prompt), long) for prompt in PROMPTS[:2]]
    healthy = started(batched.stream(ask(PROMPTS[1]), long))
    doomed, neighbour = arriving_together(batched, [
        (PROMPTS[2], GenerationParams(temperature=0.8, seed=104, max_new_tokens=40), ""), (PROMPTS[0], long, "")])[0]
    results: list = []
    reader = threading.Thread(target=lambda: results.extend(outcomes([healthy, doomed, neighbour])), daemon=True)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "a stream whose sampler could not be built never ended"
    reply, error, neighbour_reply = results
    assert [neighbour_reply, reply] == expected
    assert isinstance(error, ValueError) and "simulated" in str(error) and doomed.completion_tokens == 0
    assert batched.admission.in_flight == 0


def test_an_adapter_that_fails_to_load_ends_only_its_stream(serial, batched, monkeypatch):
    engine = batched._engine
    prepare = engine.host.prepare_adapter

    def prepare_or_fail(name: str) -> None:
        if name == "two":
            raise UserError("Adapter 'two' is damaged (simulated); delete it and train it again.")
        prepare(name)

    monkeypatch.setattr(engine.host, "prepare_adapter", prepare_or_fail)
    long = GenerationParams(temperature=0, max_new_tokens=40)
    jobs = [(PROMPTS[0], "one"), (PROMPTS[1], "")]
    expected = [serial.generate(ask(prompt), long, adapter) for prompt, adapter in jobs]
    healthy = [started(batched.stream(ask(prompt), long, adapter)) for prompt, adapter in jobs]
    doomed = batched.stream(ask(PROMPTS[2]), long, "two")
    *replies, error = outcomes(healthy + [doomed])
    assert replies == expected
    assert isinstance(error, UserError) and str(error).startswith("Adapter 'two' is damaged (simulated)")
    assert doomed.completion_tokens == 0


LONG_PROMPT = "Tell me everything about the history of Rome, from its founding to its fall. " * 14


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(serial, batched, monkeypatch):
    """Chunked prefill gives the reply a one-shot prefill gives, and the running row gets a token between
    every two chunks instead of waiting for the whole prompt."""
    from llama_space.inference import prefill

    monkeypatch.setattr(prefill, "PREFILL_CHUNK", 32)
    engine = batched._engine
    healthy = engine.host.model
    params = GenerationParams(temperature=0, max_new_tokens=24)
    long_alone = serial.generate(ask(LONG_PROMPT), params)
    running_alone = serial.generate(ask(PROMPTS[0]), GenerationParams(temperature=0, max_new_tokens=200))
    running = started(batched.stream(ask(PROMPTS[0]), GenerationParams(temperature=0, max_new_tokens=200)))
    seen_at_chunks: list[int] = []  # the running row's token count at each prefill forward pass

    class Watched:
        def __init__(self, model):
            self.model, self.device, self.config = model, model.device, model.config

        def __call__(self, **kwargs):
            if kwargs["cache"] is not engine._cache.cache:  # a joining row's own cache: a prefill chunk
                seen_at_chunks.append(running.completion_tokens)
            return self.model(**kwargs)

    monkeypatch.setattr(engine.host, "model", lambda: (Watched(healthy()[0]), healthy()[1]))
    joining = batched.stream(ask(LONG_PROMPT), params)
    reply, running_reply = outcomes([joining, running])
    assert joining.prompt_tokens > 6 * 32 and len(seen_at_chunks) == -(-joining.prompt_tokens // 32)
    assert all(a < b for a, b in itertools.pairwise(seen_at_chunks))
    assert reply == long_alone and running_reply == running_alone
