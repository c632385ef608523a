"""The app chatting through llama.cpp's OpenAI-compatible server, serving the GGUF the app exported.

The server is llama-cpp-python's (`python -m llama_cpp.server`, built portable by `make test`'s set-up), started
as a user would start it on the embedded model's F16 export; the app is started with `--backend-url` as
docs/deployment.md says. Replies are compared with the embedded model's own greedy replies in transformers.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from llama_space.export.gguf import write_gguf
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.inference.remote import RemoteBackend
from llama_space.settings import Settings, load_settings

from apputil import LOOPBACK, free_port, launched_app

pytestmark = pytest.mark.slow  # a GGUF export and a llama.cpp server of the 135M model

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def server(embedded_dir, tmp_path_factory):
    """llama-cpp-python's server on the embedded model's F16 GGUF; yields (base URL without /v1, model id)."""
    gguf_file = write_gguf(embedded_dir, tmp_path_factory.mktemp("served") / "smollm2-f16.gguf", "f16")
    port = free_port()
    log = (gguf_file.parent / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--host", LOOPBACK, "--port", str(port),
         "--n_ctx", "2048", "--n_threads", "2", "--seed", "0"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (gguf_file.parent / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llama.cpp's server did not start in 2 minutes"
            time.sleep(0.3)
        yield url, str(gguf_file)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def expected(embedded_dir, tmp_path_factory):
    """The embedded model's greedy replies in transformers: {(system, question, max_new_tokens): text}."""
    from llama_space.inference.manager import ModelManager

    manager = ModelManager(Settings(model=str(embedded_dir), dtype="float32",
                                    adapters_dir=tmp_path_factory.mktemp("adapters"))).load()
    cache: dict[tuple, str] = {}

    def reply(question: str, max_new_tokens: int, system: str = "") -> str:
        key = (system, question, max_new_tokens)
        if key not in cache:
            messages = normalize_messages([], question, system)
            cache[key] = manager.generate(messages, GenerationParams(temperature=0, max_new_tokens=max_new_tokens))
        return cache[key]

    yield reply
    manager.close()


def test_backend_reads_llamacpps_models_and_streams_the_greedy_reply(server, expected):
    url, model_id = server
    backend = RemoteBackend(Settings(backend_url=url + "/v1")).load()
    try:
        assert backend.base_name == model_id and backend.list_adapters() == []
        stream = backend.stream(normalize_messages([], QUESTION, SYSTEM), GenerationParams(temperature=0,
                                                                                          max_new_tokens=32))
        chunks = list(stream)
        assert len(chunks) > 1 and "".join(chunks) == expected(QUESTION, 32, SYSTEM)
        assert "Paris" in "".join(chunks)
        assert stream.finish_reason == "stop" and 0 < stream.completion_tokens < 32 and stream.prompt_tokens > 0
        cut = backend.stream(normalize_messages([], "Write a haiku about the sea."),
                             GenerationParams(temperature=0, max_new_tokens=8))
        assert "".join(cut) == expected("Write a haiku about the sea.", 8)
        assert cut.finish_reason == "length" and cut.completion_tokens == 8
    finally:
        backend.close()


def test_app_started_with_backend_url_chats_through_llamacpp(server, expected, tmp_path):
    """`python app.py --backend-url http://127.0.0.1:8000/v1`: gradio_client and the OpenAI SDK, through the app."""
    import openai
    from gradio_client import Client

    url, model_id = server
    settings = load_settings(["--backend-url", url + "/v1", "--adapters-dir", str(tmp_path / "adapters"),
                              "--data-dir", str(tmp_path / "data")], environ={})
    with launched_app(settings) as app:
        assert isinstance(app.backend, RemoteBackend)
        client = Client(app.url, verbose=False)
        updates = list(client.submit(message=QUESTION, history=[], system_prompt=SYSTEM, adapter="",
                                     max_new_tokens=12, temperature=0, top_p=1.0, api_name="/chat"))
        assert len(updates) > 1 and updates[-1] == expected(QUESTION, 12, SYSTEM)

        sdk = openai.OpenAI(base_url=app.url + "/v1", api_key="unused")
        assert [m.id for m in sdk.models.list()] == [model_id]
        chunks = sdk.chat.completions.create(model=model_id, messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected(QUESTION, 12)
        reply = sdk.chat.completions.create(model="base", messages=[{"role": "user", "content": "What is 2+2?"}],
                                            max_tokens=6, temperature=0)
        assert reply.choices[0].message.content == expected("What is 2+2?", 6)
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 6
