"""The compiled static-cache decode path: same greedy text as the plain path; streaming and stop still work.

Compiling with inductor takes over a minute on 2 cores, so these tests trace the same path with dynamo's
"eager" backend: generate still switches to the static cache and the compiled forward, which is the
plumbing under test; inductor's kernels are torch's responsibility.
"""

import threading
from types import SimpleNamespace

import pytest

from llama_space.errors import UserError
from llama_space.inference import manager as manager_module
from llama_space.inference.fast_decode import (
    EAGER,
    ThreadGovernor,
    decode_hooks,
    generate_overrides,
    prepare_decode,
    should_compile,
)
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.model.loading import attention_implementation
from llama_space.settings import Settings


def tiny_manager(tiny_model_dir, tmp_path_factory, compile: str = "auto") -> ModelManager:
    directory = tmp_path_factory.mktemp("fast")
    return ModelManager(Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=directory,
                                 adapters_dir=directory / "adapters", compile=compile)).load()


@pytest.fixture(scope="module")
def plain(tiny_model_dir, tmp_path_factory):
    """Loaded as the app loads it on CPU: compile=auto leaves decoding eager, so requests are batched."""
    return tiny_manager(tiny_model_dir, tmp_path_factory)


WARMED_UP_ON = []  # the thread the compiled fixture's decode step was warmed up on


@pytest.fixture(scope="module")
def fast(tiny_model_dir, tmp_path_factory):
    """compile=on, loaded as the app loads it (default concurrency), with dynamo's eager backend."""
    plans = []

    def eager(model, tokenizer, mode, **kwargs):
        plans.append(prepare_decode(model, tokenizer, mode, backend="eager", **kwargs))
        WARMED_UP_ON.append(threading.get_ident())
        return plans[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager_module, "prepare_decode", eager)
        manager = tiny_manager(tiny_model_dir, tmp_path_factory, compile="on")
    [plan] = plans
    assert plan.compiled and plan.warmup_seconds > 0
    assert manager.settings.concurrency > 1 and not manager.batching  # compiled: one at a time, via generate
    return manager


@pytest.fixture
def compiled_steps(fast, monkeypatch):
    """The caches the compiled decode step was called with, one per call, while the test runs."""
    caches = []
    compiled = fast.model._compiled_call  # what generate's get_compiled_call hands back

    def counting(*args, **kwargs):
        caches.append(type(kwargs.get("cache")).__name__)
        return compiled(*args, **kwargs)

    monkeypatch.setattr(fast.model, "_compiled_call", counting)
    return caches


def test_auto_compiles_on_cuda_only():
    assert should_compile("auto", "cuda")[0] and not should_compile("auto", "cpu")[0]
    assert should_compile("on", "cpu")[0] and not should_compile("off", "cuda")[0]
    with pytest.raises(UserError, match="auto, on, off"):
        should_compile("fast", "cpu")


def test_plain_cpu_load_keeps_the_eager_dynamic_cache_path(plain):
    model = plain.model
    assert model.generation_config.cache_implementation is None
    assert getattr(model.generation_config, "compile_config", None) is None
    assert plain.batching
    assert attention_implementation("cpu") is None  # transformers' default: SDPA
    assert generate_overrides(model, 10**6) == {}


def test_compiled_greedy_stream_equals_plain(plain, fast, compiled_steps):
    params = GenerationParams(temperature=0, max_new_tokens=24)
    for text in ("Tell me about dragons.", "What is the capital of France?"):
        messages = normalize_messages([], text)
        expected = plain.stream(messages, params)
        reference = "".join(expected)
        compiled = fast.stream(messages, params)
        chunks = [chunk for chunk in compiled if chunk]
        assert "".join(chunks) == reference and len(chunks) > 1
        assert compiled.completion_tokens == expected.completion_tokens == 24
    # Every token after the prefill's first came from the compiled step, over the static cache.
    assert compiled_steps == ["StaticCache"] * 2 * 23


def test_every_compiled_reply_decodes_on_the_thread_that_warmed_the_step_up(fast, monkeypatch):
    """torch keeps compiled CUDA graphs per thread: replies decoded on a new thread each would record them again."""
    threads = []
    compiled = fast.model._compiled_call

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return compiled(*args, **kwargs)

    monkeypatch.setattr(fast.model, "_compiled_call", recording)
    params = GenerationParams(temperature=0, max_new_tokens=6)
    for text in ("Hello", "Tell me about dragons.", "Hi"):
        assert "".join(fast.stream(normalize_messages([], text), params))
    assert len(threads) == 3 * 5 and set(threads) == set(WARMED_UP_ON) and len(WARMED_UP_ON) == 1


def test_stop_ends_compiled_generation(fast, compiled_steps):
    generation = fast.stream(normalize_messages([], "Write a long story."),
                             GenerationParams(temperature=0, max_new_tokens=400))
    texts = (chunk for chunk in generation if chunk)
    for _ in range(3):
        next(texts)
    generation.close()
    assert generation.finish_reason == "cancelled" and generation.completion_tokens < 400
    assert 3 <= len(compiled_steps) < 400


def test_a_compile_failure_warns_once_and_serves_eagerly(plain, tiny_model_dir, tmp_path_factory, monkeypatch,
                                                         caplog):
    """With the compiler unavailable (as without a C compiler), compile=on still starts: one warning, then
    the eager path, batched like a plain load, with the same greedy replies."""
    import logging

    import torch._inductor.compile_fx

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler (simulated)")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", no_compiler)
    with caplog.at_level(logging.WARNING, logger="llama_space.inference.fast_decode"):
        served = tiny_manager(tiny_model_dir, tmp_path_factory, compile="on")
    [warning] = [record for record in caplog.records if record.name == "llama_space.inference.fast_decode"]
    assert "simulated" in warning.getMessage() and "decoding eagerly" in warning.getMessage()
    config = served.model.generation_config
    assert config.cache_implementation is None and getattr(config, "compile_config", None) is None
    assert served.batching
    params = GenerationParams(temperature=0, max_new_tokens=12)
    messages = normalize_messages([], "Tell me about dragons.")
    assert served.generate(messages, params) == plain.generate(messages, params)
    served.close()


def test_lora_requests_decode_eagerly_over_a_dynamic_cache(fast):
    model = fast.model
    peft_like = SimpleNamespace(generation_config=model.generation_config, peft_config={"a": None})
    assert generate_overrides(peft_like, 10) == EAGER == {"disable_compile": True, "cache_implementation": "dynamic"}
    assert generate_overrides(model, 10) == {}


def test_a_request_longer_than_the_static_cache_never_grows_it(tiny_model_dir, tmp_path_factory, monkeypatch):
    """The static cache is compiled for 48 tokens here: a 90-token request decodes eagerly over a cache of its own,
    and the next short request still runs the compiled step over the same 48 positions (transformers would have
    grown the static cache to 90 for good, every later step attending over it)."""
    from llama_space.inference import fast_decode

    monkeypatch.setattr(fast_decode, "CACHE_CEILING", {"cuda": 48, "cpu": 48})
    monkeypatch.setattr(manager_module, "prepare_decode",
                        lambda *args, **kwargs: prepare_decode(*args, backend="eager", **kwargs))
    served = tiny_manager(tiny_model_dir, tmp_path_factory, compile="on")
    model = served.model
    assert model.generation_config.max_cache_len == 48
    caches = []
    compiled = model._compiled_call

    def counting(*args, **kwargs):
        caches.append(kwargs.get("cache").layers[0].max_cache_len)
        return compiled(*args, **kwargs)

    monkeypatch.setattr(model, "_compiled_call", counting)
    messages = normalize_messages([], "Hi")
    long = served.stream(messages, GenerationParams(temperature=0, max_new_tokens=80))
    assert long.prompt_tokens + 80 > 48
    "".join(long)
    assert long.completion_tokens == 80 and caches == []  # eager, over a dynamic cache
    short = served.stream(messages, GenerationParams(temperature=0, max_new_tokens=8))
    "".join(short)
    assert caches == [48] * 7
    served.close()


def test_thread_governor_leaves_the_cores_others_use():
    # (wall seconds, machine busy CPU seconds, this process's CPU seconds), as cpu_seconds() reads them
    samples = iter([(0, 0, 0), (1, 2.0, 2.0), (2, 3.9, 3.0), (3, 5.9, 4.0), (4, 6.9, 5.0)])
    chosen = []
    governor = ThreadGovernor(cores=2, sample=lambda: next(samples), set_threads=chosen.append)
    for _ in range(4):
        governor.update()
    # alone: both cores; another process on ~1 core: one thread (spinning threads would collapse); alone again
    assert chosen == [2, 1, 2]


def test_thread_governor_never_stops_generation(plain):
    import torch

    [governor] = decode_hooks(plain.model)
    assert isinstance(governor, ThreadGovernor)
    ids = torch.ones((1, 5), dtype=torch.long)
    assert not governor(ids, None).any()
