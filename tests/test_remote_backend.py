"""RemoteBackend against a real second Llama Space (tiny model) on loopback, and an app chatting through it."""

import time

import pytest

from llama_space.errors import UserError
from llama_space.inference.backend import HoldsModel, SharesWeights, make_backend
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.inference.remote import RemoteBackend
from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import free_port, launched_app
from conftest import MODEL_CACHE

KEY = "remote-secret"
GREEDY = GenerationParams(temperature=0, max_new_tokens=24)
HELLO = normalize_messages([], "Hello there, who are you?")


@pytest.fixture(scope="module")
def remote(tiny_model_dir, tmp_path_factory):
    """The second instance: a real app serving the tiny model and one adapter, /v1 behind a key."""
    adapters_dir = tmp_path_factory.mktemp("remote-adapters")
    random_adapter(tiny_model_dir, adapters_dir / "pirate", seed=3)
    settings = Settings(model=str(tiny_model_dir), adapters_dir=adapters_dir, data_dir=MODEL_CACHE.parent,
                        api_key=KEY, max_new_tokens_limit=256, dtype="float32")
    with launched_app(settings) as app:
        yield app


@pytest.fixture(scope="module")
def backend(remote):
    backend = RemoteBackend(Settings(backend_url=remote.url + "/v1", backend_api_key=KEY)).load()
    yield backend
    backend.close()


def test_make_backend_picks_remote_only_with_a_url(remote):
    assert isinstance(make_backend(Settings(backend_url=remote.url)), RemoteBackend)
    assert type(make_backend(Settings())).__name__ == "ModelManager"


def test_a_remote_backend_declares_no_model_in_this_process(backend):
    """Evaluation and shared training jobs need one, and ask the backend by its declared abilities."""
    assert not isinstance(backend, HoldsModel) and not isinstance(backend, SharesWeights)


def test_remote_lists_base_and_adapters(backend, remote):
    assert backend.base_name == remote.backend.base_name
    assert backend.list_adapters() == backend.loaded_adapters() == ["pirate"]
    backend.load_adapter("pirate")
    with pytest.raises(UserError, match="Unknown adapter 'nope'"):
        backend.load_adapter("nope")
    assert backend.count_tokens("four words of text") > 0 and backend.context_window > 0


@pytest.mark.parametrize("adapter", ["", "pirate"])
def test_streamed_reply_equals_the_remote_models_greedy_reply(backend, remote, adapter):
    stream = backend.stream(HELLO, GREEDY, adapter)
    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == remote.backend.generate(HELLO, GREEDY, adapter)
    assert stream.completion_tokens == 24 and stream.finish_reason == "length"
    assert stream.prompt_tokens > 0 and stream.time_to_first_token > 0 and stream.tokens_per_second > 0
    assert stream.dropped_messages == 0


def test_adapter_changes_the_reply(backend):
    assert backend.generate(HELLO, GREEDY, "pirate") != backend.generate(HELLO, GREEDY, "base")


def test_close_hangs_up_and_frees_the_remote_model(backend, remote):
    stream = backend.stream(normalize_messages([], "Write a long story."),
                            GenerationParams(temperature=0, max_new_tokens=256))
    iterator = iter(stream)
    next(iterator)
    stream.close()
    assert stream.finish_reason == "cancelled" and 0 < stream.completion_tokens < 256
    deadline = time.monotonic() + 10
    while remote.backend._lock.locked() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not remote.backend._lock.locked()


def test_remote_errors_become_user_errors_with_its_message(backend, remote):
    with pytest.raises(UserError, match="Unknown adapter 'nope'"):
        backend.stream(HELLO, GREEDY, "nope")
    with pytest.raises(UserError, match="max_tokens must be between 1 and 256"):
        backend.stream(HELLO, GenerationParams(temperature=0, max_new_tokens=300))
    with pytest.raises(UserError, match="Incorrect API key"):
        RemoteBackend(Settings(backend_url=remote.url, backend_api_key="wrong")).load()


def test_unreachable_backend_says_where():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=f"backend at {url}/v1 is unreachable"):
        RemoteBackend(Settings(backend_url=url)).load()


def test_app_chats_through_the_other_instance(remote, tmp_path):
    """The whole first app (Gradio /chat and OpenAI route) answering with the second one's model."""
    import openai
    from gradio_client import Client

    expected = remote.backend.generate(HELLO, GREEDY, "pirate")
    settings = Settings(backend_url=remote.url + "/v1", backend_api_key=KEY, adapters_dir=tmp_path,
                        data_dir=tmp_path, max_new_tokens_limit=256)
    with launched_app(settings) as front:
        assert isinstance(front.backend, RemoteBackend)
        client = Client(front.url, verbose=False)
        updates = list(client.submit(message=HELLO[-1]["content"], history=[], system_prompt="",
                                     adapter="pirate", max_new_tokens=24, temperature=0, top_p=1.0,
                                     api_name="/chat"))
        assert updates[-1] == expected
        sdk = openai.OpenAI(base_url=front.url + "/v1", api_key="unused")
        assert [m.id for m in sdk.models.list()] == [remote.backend.base_name, "pirate"]
        reply = sdk.chat.completions.create(model="pirate", messages=HELLO, max_tokens=24, temperature=0)
        assert reply.choices[0].message.content == expected
        assert reply.usage.completion_tokens == 24


def test_remote_requests_share_the_apps_queue_bound(remote):
    from llama_space.errors import QueueFullError

    bounded = RemoteBackend(Settings(backend_url=remote.url, backend_api_key=KEY, max_queue=1,
                                     concurrency=1)).load()
    long = GenerationParams(temperature=0, max_new_tokens=200)
    try:
        held = [bounded.stream(HELLO, long), bounded.stream(HELLO, long)]
        with pytest.raises(QueueFullError, match="busy"):
            bounded.stream(HELLO, GREEDY)
        held[0].close()
        for _ in held[1]:
            break  # leaving the loop hangs up and gives the place back as well
        assert bounded.admission.in_flight == 0
        assert "".join(bounded.stream(HELLO, GREEDY))
        assert bounded.admission.in_flight == 0
    finally:
        bounded.close()
