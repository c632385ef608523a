"""The remote backend against a stand-in for llama.cpp's C++ `llama-server`, speaking its wire format.

The app chatting through a real llama.cpp server (llama-cpp-python's) is tests/test_llamacpp_server.py; this
stand-in keeps the C++ server's own stream shapes, which llama-cpp-python's server does not send:

llama-server (serving an exported GGUF) lists one model in /v1/models with `owned_by: llamacpp` and a
`meta` block, opens a stream with a role-only chunk whose content is null, sends a chunk per token (a
character split over tokens waits for its last byte, so one chunk can carry two tokens) and ends with
an empty delta that carries finish_reason, usage and its `timings`, then [DONE].
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.inference.remote import RemoteBackend
from llama_space.settings import Settings

from apputil import LOOPBACK

MODEL_ID = "smollm2-135m-instruct-q8_0.gguf"  # llama-server names the model after the file it loaded
# The reply the stand-in streams, token by token; the wave is two tokens sent as one chunk.
TOKENS = ["Hello", " from", " llama", ".cpp", "!", " 👋"]
WAVE_TOKENS = 2


def _reply(max_tokens: int) -> tuple[list[str], int, str]:
    """(chunks to send, tokens they hold, finish_reason) for a reply capped at `max_tokens` tokens."""
    chunks, used = [], 0
    for piece in TOKENS:
        cost = WAVE_TOKENS if piece == " 👋" else 1
        if used + cost > max_tokens:
            return chunks, used, "length"
        chunks.append(piece)
        used += cost
    return chunks, used, "stop"


class LlamaCppStandIn(BaseHTTPRequestHandler):
    """GET /v1/models and streamed POST /v1/chat/completions as llama-server answers them."""

    requests: ClassVar[list[dict]] = []  # every body received, in order

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _json(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            return self._json({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}, 404)
        meta = {"vocab_type": 2, "n_vocab": 49152, "n_ctx_train": 8192, "n_embd": 576,
                "n_params": 134515008, "size": 144806400}
        self._json({"models": [{"name": MODEL_ID, "model": MODEL_ID, "modified_at": "", "size": "", "digest": "",
                                "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
                                "parameters": "", "details": {"parent_model": "", "format": "gguf"}}],
                    "object": "list",
                    "data": [{"id": MODEL_ID, "object": "model", "created": int(time.time()),
                              "owned_by": "llamacpp", "meta": meta}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.path != "/v1/chat/completions" or not body.get("stream"):
            return self._json({"error": {"code": 400, "message": "not in this stand-in", "type": "invalid_request_error"}}, 400)
        chunks, used, finish = _reply(int(body.get("max_tokens") or 64))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        head = {"created": int(time.time()), "id": "chatcmpl-standin", "model": body["model"],
                "system_fingerprint": "b6097-standin", "object": "chat.completion.chunk"}
        events = [{"choices": [{"finish_reason": None, "index": 0,
                                "delta": {"role": "assistant", "content": None}}], **head}]
        events += [{"choices": [{"finish_reason": None, "index": 0, "delta": {"content": c}}], **head} for c in chunks]
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"]) + 5
        events.append({"choices": [{"finish_reason": finish, "index": 0, "delta": {}}], **head,
                       "usage": {"completion_tokens": used, "prompt_tokens": prompt_tokens,
                                 "total_tokens": used + prompt_tokens},
                       "timings": {"prompt_n": prompt_tokens, "prompt_ms": 12.5, "prompt_per_token_ms": 0.9,
                                   "prompt_per_second": 1100.0, "predicted_n": used, "predicted_ms": 90.0,
                                   "predicted_per_token_ms": 15.0, "predicted_per_second": 66.0}})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def standin():
    """The stand-in on a free loopback port; yields its base URL (without /v1, as users type it)."""
    server = ThreadingHTTPServer((LOOPBACK, 0), LlamaCppStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_backend_reads_llamacpp_models_and_stream(standin):
    backend = RemoteBackend(Settings(backend_url=standin + "/v1")).load()
    try:
        assert backend.base_name == MODEL_ID and backend.list_adapters() == []
        stream = backend.stream(normalize_messages([], "hi", "Be brief."), GenerationParams(temperature=0))
        assert list(stream) == TOKENS  # the role-only first chunk (content null) adds nothing
        assert stream.finish_reason == "stop"
        assert stream.completion_tokens == len(TOKENS) + 1  # llama.cpp's usage, not the chunk count
        sent = LlamaCppStandIn.requests[-1]
        assert sent["model"] == MODEL_ID and sent["stream"] is True and sent["temperature"] == 0
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
        cut = backend.stream(normalize_messages([], "hi"), GenerationParams(temperature=0, max_new_tokens=3))
        assert "".join(cut) == "Hello from llama" and cut.finish_reason == "length" and cut.completion_tokens == 3
    finally:
        backend.close()
