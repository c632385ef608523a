"""ZeroGPU: `spaces` is a no-op elsewhere; on ZeroGPU replies run inside one GPU call and training is refused."""

import pytest
import spaces

from llama_space.errors import NotFoundError, UserError
from llama_space.inference import zerogpu
from llama_space.inference.backend import ChatBackend, HoldsModel, SharesWeights, make_backend
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.settings import Settings

GREEDY = GenerationParams(temperature=0, max_new_tokens=12)
HELLO = normalize_messages([], "Hello there")


def test_spaces_gpu_is_a_no_op_off_zerogpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def reply():
        return "hi"

    assert spaces.GPU(reply) is reply
    assert spaces.GPU(duration=30)(reply) is reply
    settings = Settings()
    assert not settings.zero_gpu
    assert isinstance(make_backend(settings), ModelManager)
    zerogpu.refuse_training(settings)  # allowed


def test_duration_grows_with_max_new_tokens_up_to_the_cap():
    assert zerogpu.reply_seconds(1) == zerogpu.START_SECONDS + 1
    assert zerogpu.reply_seconds(512) == zerogpu.START_SECONDS + 26
    assert zerogpu.reply_seconds(512) < zerogpu.reply_seconds(1024)
    assert zerogpu.reply_seconds(100_000) == zerogpu.MAX_SECONDS


def test_on_zerogpu_training_is_refused_with_the_hardware_to_pick(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    settings = Settings()
    assert settings.zero_gpu
    with pytest.raises(UserError, match="Hardware.*A10G"):
        zerogpu.refuse_training(settings)
    backend = make_backend(settings)  # `spaces` read the environment when imported: its GPU() stays a no-op here
    assert isinstance(backend, zerogpu.ZeroGPUBackend)
    assert backend.inner.settings.concurrency == 1  # the batch engine's thread would not exist in the fork


@pytest.mark.parametrize("compile", ["auto", "on"])
def test_on_zerogpu_nothing_is_compiled_or_warmed_up_at_start_up(compile, tiny_model_dir, tmp_path, monkeypatch):
    """Start-up runs in the app's process, outside any GPU call: the decode step is neither compiled nor run."""
    from llama_space.inference import fast_decode

    def outside_a_gpu_call(*args, **kwargs):
        raise AssertionError("GPU work in the app's own process")

    monkeypatch.setattr(fast_decode, "_warm_up", outside_a_gpu_call)
    monkeypatch.setattr(fast_decode, "enable_compiled_decode", outside_a_gpu_call)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    backend = make_backend(Settings(model=str(tiny_model_dir), dtype="float32", compile=compile,
                                    data_dir=tmp_path, adapters_dir=tmp_path / "adapters")).load()
    assert backend.inner.settings.compile == "off" and backend.settings.concurrency == 1
    assert getattr(backend.inner.model.generation_config, "compile_config", None) is None
    assert backend.generate(HELLO, GREEDY)


@pytest.fixture(scope="module")
def manager(tiny_model_dir, tmp_path_factory):
    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path_factory.mktemp("data"),
                        adapters_dir=tmp_path_factory.mktemp("adapters"), concurrency=1, max_new_tokens_limit=64)
    return ModelManager(settings).load()


def test_relayed_reply_equals_the_direct_one_with_its_statistics(manager):
    direct = manager.stream(HELLO, GREEDY)
    expected = "".join(direct)
    relayed = zerogpu.ZeroGPUBackend(manager).stream(HELLO, GREEDY)
    assert "".join(relayed) == expected
    assert relayed.completion_tokens == direct.completion_tokens > 0
    assert relayed.prompt_tokens == direct.prompt_tokens
    assert relayed.finish_reason == direct.finish_reason
    assert relayed.tokens_per_second > 0
    raw = zerogpu.ZeroGPUBackend(manager).generate("Once upon a time", GREEDY)  # /v1/completions' raw prompt
    assert raw == manager.generate("Once upon a time", GREEDY)


def test_user_errors_raised_inside_the_gpu_call_keep_their_class_and_text(manager):
    backend = zerogpu.ZeroGPUBackend(manager)
    with pytest.raises(UserError, match="max_new_tokens must be at most 64"):
        "".join(backend.stream(HELLO, GenerationParams(max_new_tokens=65)))
    with pytest.raises(NotFoundError):
        backend.stream(HELLO, GREEDY, adapter="missing")
    assert backend.base_name == manager.base_name  # everything else is the inner backend's


def test_it_forwards_the_chat_backend_and_declares_no_other_ability(manager):
    backend = zerogpu.ZeroGPUBackend(manager)
    members = [name for name in (*vars(ChatBackend), *ChatBackend.__annotations__) if not name.startswith("_")]
    assert {"settings", "tokenizer", "count_tokens", "unload_adapter"} <= set(members)
    assert [name for name in members if not hasattr(backend, name)] == []
    assert (backend.list_adapters(), backend.check_adapter("base")) == (manager.list_adapters(), "")
    assert backend.context_window == manager.context_window and backend.tokenizer is manager.tokenizer
    # The model runs only inside GPU calls: nothing outside them may borrow it or train beside it.
    assert isinstance(manager, HoldsModel) and isinstance(manager, SharesWeights)
    assert not isinstance(backend, HoldsModel) and not isinstance(backend, SharesWeights)


def test_starting_a_job_on_zerogpu_is_refused_before_anything_is_copied(manager, monkeypatch, tmp_path):
    from llama_space.service.actions import Actions
    from llama_space.service.permissions import Permissions
    from llama_space.training.runner import JobRunner

    settings = manager.settings
    actions = Actions(manager, JobRunner(settings), Permissions(settings, lambda: None))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(UserError, match="ZeroGPU"):
        actions.start(None, "my-adapter", actions.params("quick", {}))
    assert not list(settings.data_dir.glob("jobs/*"))
