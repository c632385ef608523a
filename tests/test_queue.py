"""One queue for every route: a full queue is refused at once everywhere, and a client that leaves frees its slot.

The key tests run in both modes: serial (one request at a time, as with a compiled decode step) and batched
(requests decode together in the batch engine); the Gradio chat ones run serially only, to keep the file quick.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space.settings import Settings

from apputil import launched_app
from conftest import MODEL_CACHE

STORY = "Write a long story about a dragon."  # greedy SmolLM2 goes on for hundreds of tokens
LONG = {"messages": [{"role": "user", "content": STORY}], "max_tokens": 2000, "temperature": 0}


MODES = {"serial": 1, "batched": 2}  # mode -> concurrency
SERIAL_ONLY = pytest.mark.parametrize("launched", ["serial"], indirect=True)


@pytest.fixture(scope="module", params=list(MODES))
def launched(embedded_dir, tmp_path_factory, request):
    """The embedded model with room for `concurrency` running requests and one waiting."""
    settings = Settings(data_dir=MODEL_CACHE.parent, adapters_dir=tmp_path_factory.mktemp("adapters"),
                        dtype="float32", max_queue=1, concurrency=MODES[request.param])
    with launched_app(settings) as app:
        assert app.backend.batching == (request.param == "batched")
        yield app


@pytest.fixture(scope="module")
def sdk(launched):
    return openai.OpenAI(base_url=launched.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, f"still waiting after {timeout} s"
        time.sleep(0.02)
    return time.perf_counter() - start


def idle(launched) -> Callable[[], bool]:
    manager = launched.backend
    return lambda: manager.admission.in_flight == 0 and not manager._lock.locked()


def decoding(launched) -> bool:
    """Whether the model is generating a reply now."""
    manager = launched.backend
    return manager._engine.active > 0 if manager.batching else manager._lock.locked()


@contextmanager
def long_stream(url: str, chunks: int = 2) -> Iterator[None]:
    """A long /v1 stream, read until `chunks` pieces of text arrived; leaving the block drops the connection."""
    with httpx.Client(timeout=60) as client, client.stream("POST", url + "/v1/chat/completions",
                                                           json={**LONG, "stream": True}) as response:
        assert response.status_code == 200
        lines, seen = response.iter_lines(), 0  # kept: closing this generator would hang up early
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                seen += 1
                if seen == chunks:
                    break
        yield


def raw_post(url: str, body: dict) -> socket.socket:
    """Send POST / on a bare socket and leave the answer unread; closing the socket hangs up."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (host.encode(), len(data)) + data)
    return sock


def assert_served_promptly(url: str) -> None:
    started = time.perf_counter()
    reply = httpx.post(url + "/", json={"prompt": "Hi", "max_new_tokens": 1}, timeout=10)
    assert reply.status_code == 200 and time.perf_counter() - started < 5


def test_full_queue_is_refused_at_once_on_every_route(launched, sdk):
    url, manager = launched.url, launched.backend
    gradio = Client(url, verbose=False)
    limit = manager.admission.limit
    with long_stream(url):
        # fill the queue (batched: a second running request, then the waiting one); each leaves when its socket closes
        others = [raw_post(url, {"prompt": STORY, "max_new_tokens": 2000, "temperature": 0}) for _ in range(limit - 1)]
        wait_until(lambda: manager.admission.in_flight == limit, timeout=10)

        started = time.perf_counter()
        rest = httpx.post(url + "/", json={"prompt": "Hi"}, timeout=10)
        assert rest.status_code == 429 and rest.json()["status"] == 429 and "busy" in rest.json()["error"]
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="base", messages=LONG["messages"], max_tokens=5)
        assert refused.value.code == "queue_full" and refused.value.type == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="base", messages=LONG["messages"], max_tokens=5, stream=True)
        with pytest.raises(AppError, match="busy"):
            gradio.predict("Hi", "", "", 5, 0.0, 0.9, api_name="/generate")
        assert time.perf_counter() - started < 5  # refused, not queued behind minutes of generation
        for sock in others:
            sock.close()
    wait_until(idle(launched), timeout=5)  # all left: the running ones stopped, the waiting one never ran long
    assert_served_promptly(url)


@pytest.mark.parametrize("client", ["httpx", "openai"])
def test_dropped_stream_frees_its_slot_within_a_step(launched, sdk, client):
    if client == "httpx":
        with long_stream(launched.url):
            assert decoding(launched)
    else:
        stream = sdk.chat.completions.create(model="base", stream=True, **LONG)
        for _ in range(3):
            next(stream)
        assert decoding(launched)
        stream.close()
    assert wait_until(idle(launched), timeout=2) < 2
    assert_served_promptly(launched.url)


def test_dropped_non_streaming_request_frees_its_slot(launched):
    sock = raw_post(launched.url, {"prompt": STORY, "max_new_tokens": 2000, "temperature": 0})
    wait_until(lambda: decoding(launched), timeout=10)
    time.sleep(0.5)  # generating now
    sock.close()
    assert wait_until(idle(launched), timeout=2) < 2
    assert_served_promptly(launched.url)


@SERIAL_ONLY
def test_gradio_chat_shares_the_queue_and_frees_it_when_cancelled(launched, sdk):
    gradio = Client(launched.url, verbose=False)
    job = gradio.submit(STORY, [], "", "", 2000, 0.0, 0.9, api_name="/chat")
    wait_until(lambda: any(job.outputs()), timeout=20)  # streaming text (the first update is empty)
    waiting = raw_post(launched.url, {"prompt": "Hi", "max_new_tokens": 1})
    wait_until(lambda: launched.backend.admission.in_flight == 2, timeout=10)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="base", messages=LONG["messages"], max_tokens=5)
    job.cancel()
    waiting.close()
    wait_until(idle(launched), timeout=5)


@SERIAL_ONLY
def test_gradio_chat_cancelled_while_waiting_never_runs(launched):
    gradio = Client(launched.url, verbose=False)
    with long_stream(launched.url):
        # 40 tokens: if it leaks, it runs for a few seconds (not 1.5), and the next test does not wait long.
        job = gradio.submit(STORY, [], "", "", 40, 0.0, 0.9, api_name="/chat")
        wait_until(lambda: launched.backend.admission.in_flight == 2, timeout=10)
        job.cancel()
        time.sleep(0.5)
    try:
        wait_until(idle(launched), timeout=1.5)
    finally:
        wait_until(idle(launched), timeout=60)  # the next test needs the model
