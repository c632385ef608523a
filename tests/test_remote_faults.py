"""The remote chat backend misbehaving (down, HTML instead of JSON, a stream cut off or garbled): every surface
(POST /, /v1, Gradio /generate) answers a clear 502-kind message, never the remote's page or exception text,
and keeps serving; Stop racing the end of a reply gives its queue place back once; model lists are cached."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from llama_space.errors import BackendError
from llama_space.inference import remote, remote_wire
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.remote import RemoteBackend, RemoteStream
from llama_space.settings import Settings

from apputil import LOOPBACK, free_port, launched_app

BASE = "stand-in-model"
HTML = (b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>"
        b"<p>upstream /srv/vllm/private failed</p></body></html>")
# What must never reach a client: tracebacks, exception class names or their text, the remote's page.
FORBIDDEN = ("Traceback", "Error:", "ConnectError", "JSONDecodeError", "RemoteProtocolError", "Expecting value",
             "Errno", "<html", "<h1>", "/srv/vllm")
HELLO = [{"role": "user", "content": "Hi"}]
# mode -> what the client is told
FAULTS = {"down": "is unreachable (nothing accepted the connection)",
          "html": "answered HTTP 502 with something that is not JSON (text/html)",
          "html200": "answered something that is not JSON (text/html); check LLAMA_SPACE_BACKEND_URL",
          "drop": "stopped answering mid-reply",
          "no_done": "stopped answering mid-reply",
          "bad_chunk": "sent a stream chunk that is not chat-completion JSON"}
MID_STREAM = {"drop", "no_done", "bad_chunk"}  # faults that come after the reply started


def chunk_event(text: str, finish: str | None = None) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": BASE,
                       "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})


class StandInHandler(BaseHTTPRequestHandler):
    """Answers GET /v1/models and POST /v1/chat/completions the way the server's `mode` says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        standin = self.server.standin
        standin.model_lists += 1
        if standin.mode in ("html", "html200"):
            self._send(502 if standin.mode == "html" else 200, HTML, "text/html")
            return
        cards = [{"id": BASE, "object": "model"}, {"id": "pirate", "object": "model", "parent": BASE}]
        self._send(200, json.dumps({"object": "list", "data": cards}).encode(), "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        mode = self.server.standin.mode
        if mode in ("html", "html200"):
            self._send(502 if mode == "html" else 200, HTML, "text/html")
            return
        events = [chunk_event("Hello"), chunk_event(" world")]
        if mode == "bad_chunk":
            events.append("<html>oops</html>")
        if mode in ("ok", "bad_chunk"):
            events += [chunk_event("", "stop"), "[DONE]"]
        self._stream(events, complete=mode != "drop")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # no kept-alive connection outlives stop()
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _stream(self, events: list[str], complete: bool) -> None:
        """Chunked SSE; incomplete means the connection drops without the final chunk (as when a remote dies)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events:
            data = f"data: {event}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if complete:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class StandIn:
    """An OpenAI-compatible stand-in on a loopback port of its own; it can stop (nothing listens) and start
    again on the same port, and counts the model lists it answered."""

    def __init__(self) -> None:
        self.port, self.mode, self.model_lists = free_port(), "ok", 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/v1"

    def start(self) -> None:
        self._server = ThreadingHTTPServer((LOOPBACK, self.port), StandInHandler)
        self._server.standin = self
        self._server.handle_error = lambda request, address: None  # clients hanging up early are the point
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def standin():
    server = StandIn()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(standin, tmp_path_factory):
    """The app under test, chatting through the stand-in."""
    root = tmp_path_factory.mktemp("front")
    with launched_app(Settings(backend_url=standin.url, adapters_dir=root / "adapters", data_dir=root)) as app:
        yield app


@pytest.fixture(scope="module")
def gradio(front):
    from gradio_client import Client

    return Client(front.url, verbose=False)


@contextmanager
def misbehaving(standin: StandIn, mode: str):
    """The stand-in answers as `mode` says ("down": nothing listens) until the block ends."""
    if mode == "down":
        standin.stop()
    standin.mode = mode
    try:
        yield
    finally:
        standin.mode = "ok"
        if mode == "down":
            standin.start()


def assert_clean(text: str) -> None:
    for word in FORBIDDEN:
        assert word not in text, f"{word!r} reached the client: {text}"


def chat_completion(front, stream: bool, model: str = BASE) -> httpx.Response:
    return httpx.post(front.url + "/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": HELLO, "max_tokens": 8, "stream": stream})


def assert_openai_error(response: httpx.Response, expected: str) -> None:
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert expected in error["message"] and error["type"] == "server_error" and error["code"] == "backend_error"
    assert_clean(response.text)


def sse_data(response: httpx.Response) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
            for line in response.text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("mode", list(FAULTS))
def test_rest_says_the_backend_failed_with_502(front, standin, mode):
    with misbehaving(standin, mode):
        response = httpx.post(front.url + "/", json={"prompt": "Hi", "max_new_tokens": 8}, timeout=60)
    assert response.status_code == 502
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == 502 and FAULTS[mode] in body["error"]
    assert_clean(response.text)
    again = httpx.post(front.url + "/", json={"prompt": "Hi", "max_new_tokens": 8}, timeout=60)
    assert again.status_code == 200 and again.json()["response"] == "Hello world"


@pytest.mark.parametrize("mode", list(FAULTS))
def test_openai_completion_is_a_502_in_openais_error_shape(front, standin, mode):
    with misbehaving(standin, mode):
        response = chat_completion(front, stream=False)
    assert_openai_error(response, FAULTS[mode])
    assert chat_completion(front, stream=False).json()["choices"][0]["message"]["content"] == "Hello world"


@pytest.mark.parametrize("mode", list(FAULTS))
def test_openai_stream_ends_with_an_error_event_then_done(front, standin, mode):
    with misbehaving(standin, mode):
        response = chat_completion(front, stream=True)
    if mode not in MID_STREAM:  # refused before the stream started: a plain error answer
        assert_openai_error(response, FAULTS[mode])
        return
    assert response.status_code == 200
    events = sse_data(response)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert FAULTS[mode] in error["message"] and error["code"] == "backend_error"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "Hello world"
    assert_clean(response.text)
    assert sse_data(chat_completion(front, stream=True))[-1] == "[DONE]"


@pytest.mark.parametrize("mode", list(FAULTS))
def test_gradio_generate_raises_app_error_with_the_message(front, standin, gradio, mode):
    from gradio_client.exceptions import AppError

    kwargs = {"prompt": "Hi", "system_prompt": "", "adapter": "", "max_new_tokens": 8, "temperature": 0.0,
              "top_p": 1.0, "api_name": "/generate"}
    with misbehaving(standin, mode), pytest.raises(AppError) as raised:
        gradio.predict(**kwargs)
    assert FAULTS[mode] in str(raised.value)
    assert_clean(str(raised.value))
    assert gradio.predict(**kwargs) == "Hello world"
    assert httpx.get(front.url + "/gradio_api/info", timeout=30).status_code == 200


@pytest.mark.parametrize("mode", ["down", "html", "html200"])
def test_model_list_is_a_502_while_the_backend_is_unusable(front, standin, monkeypatch, mode):
    monkeypatch.setattr(remote, "MODELS_TTL", 0.0)
    with misbehaving(standin, mode):
        response = httpx.get(front.url + "/v1/models", timeout=60)
    assert_openai_error(response, FAULTS[mode])
    assert [m["id"] for m in httpx.get(front.url + "/v1/models", timeout=60).json()["data"]] == [BASE, "pirate"]


def test_model_ids_are_asked_once_per_ttl_not_per_request(front, standin, monkeypatch):
    monkeypatch.setattr(remote, "MODELS_TTL", 60.0)
    httpx.get(front.url + "/v1/models", timeout=60)  # the list is fresh from here on
    before = standin.model_lists
    for _ in range(3):
        reply = httpx.post(front.url + "/", json={"prompt": "Hi", "adapter": "pirate"}, timeout=60)
        assert reply.json()["response"] == "Hello world"
        assert chat_completion(front, stream=False, model="pirate").status_code == 200
        assert chat_completion(front, stream=False, model="nope").status_code == 404
        assert httpx.get(front.url + "/v1/models", timeout=60).status_code == 200
    assert standin.model_lists == before
    monkeypatch.setattr(remote, "MODELS_TTL", 0.0)
    assert httpx.get(front.url + "/v1/models", timeout=60).status_code == 200
    assert standin.model_lists == before + 1


def test_stop_racing_the_end_of_a_reply_gives_the_place_back_once(standin):
    """close() from another thread while __iter__ runs or ends: no error, and the queue place comes back once."""
    backend = RemoteBackend(Settings(backend_url=standin.url)).load()
    params = GenerationParams(temperature=0, max_new_tokens=8)
    failures: list[BaseException] = []

    def read_to_the_end(stream: RemoteStream, start: threading.Barrier) -> None:
        start.wait()
        try:
            assert "Hello world".startswith("".join(stream))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            failures.append(exc)

    try:
        for _ in range(150):
            stream, start = backend.stream(HELLO, params), threading.Barrier(2)
            reader = threading.Thread(target=read_to_the_end, args=(stream, start))
            reader.start()
            start.wait()
            stream.close()
            reader.join()
            assert not failures, failures[0]
            assert backend.admission.in_flight == 0
    finally:
        backend.close()


class SlowHandOver(RemoteStream):
    """A RemoteStream whose end callback takes a while to read, so that two hang-ups interleave there even
    under the GIL (as they do on a free-threaded interpreter)."""

    @property
    def _on_end(self):
        on_end = self.__dict__["on_end"]
        time.sleep(0.02)
        return on_end

    @_on_end.setter
    def _on_end(self, on_end) -> None:
        self.__dict__["on_end"] = on_end


def test_two_hang_ups_at_once_give_the_place_back_once(standin):
    backend = RemoteBackend(Settings(backend_url=standin.url)).load()
    body = remote_wire.request_body(BASE, HELLO, GenerationParams(temperature=0, max_new_tokens=8))
    try:
        for _ in range(10):
            backend.admission.enter()
            stream = SlowHandOver(backend, body, on_end=backend.admission.leave)
            reader = threading.Thread(target=list, args=(stream,))
            reader.start()
            stream.close()
            reader.join()
            assert backend.admission.in_flight == 0
    finally:
        backend.close()


@pytest.mark.parametrize("lines", [
    ["data: 5"], ["data: {\"choices\": {\"delta\": 1}}"], ["data: {\"choices\": [{\"delta\": \"x\"}]}"],
    ["data: {\"choices\": [{\"delta\": {\"content\": 3}}]}"], ["data: {\"usage\": {\"completion_tokens\": \"7\"}}"]])
def test_chunks_of_the_wrong_shape_are_a_backend_error(lines):
    with pytest.raises(BackendError, match="not chat-completion JSON"):
        list(remote_wire.sse_chunks(iter(lines), "http://x/v1"))


def test_an_error_event_mid_stream_is_a_backend_error_with_its_message():
    lines = [f"data: {chunk_event('Hi')}", "data: {\"error\": {\"message\": \"out of memory\"}}"]
    with pytest.raises(BackendError, match="failed while streaming: out of memory"):
        list(remote_wire.sse_chunks(iter(lines), "http://x/v1"))


def test_a_refused_key_is_the_apps_misconfiguration_not_the_clients():
    """The remote refusing LLAMA_SPACE_BACKEND_API_KEY is a 502 that names the setting, not a 400 "wrong key"."""
    response = httpx.Response(401, json={"error": {"message": "Incorrect API key provided."}})
    error = remote_wire.remote_error(response, "http://x/v1")
    assert isinstance(error, BackendError)
    assert "Incorrect API key provided." in str(error) and "LLAMA_SPACE_BACKEND_API_KEY" in str(error)
