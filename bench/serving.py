"""The app served in a child process on a loopback port, as the benchmarks time it.

`python bench/serving.py serve --model PATH ...` is the child: it launches the app and serves until stdin
closes (`serve-fake`: the chat routes around an instant fake model, to time the transport alone).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from common import REPO  # sets up the import path and offline mode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(model: str, dtype: str = "bfloat16", fake: bool = False, info: dict | None = None,
               gradio_poll: bool = False, **settings) -> Iterator[str]:
    """The app serving `model` in a child process on a free loopback port; yields its base URL.

    A separate process, as in production: the client's Python work must not share the server's GIL.
    `fake` serves the /chat and /v1 routes around an instant fake model instead (see _launch_fake).
    `info`, when given, receives the child's pid and the dtype it serves in. `gradio_poll` keeps Gradio's
    default queue polling instead of the app's (web/ui's QUEUE_POLL_S), to measure what it costs.
    """
    port = free_port()
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()] + ["--gradio-poll"] * gradio_poll
    with tempfile.TemporaryDirectory() as adapters_dir:
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve-fake" if fake else "serve", "--model", model, "--dtype", dtype,
             "--port", str(port),
             "--adapters-dir", adapters_dir, "--data-dir", str(REPO / "data"), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            for line in proc.stdout:  # Gradio prints its own banner first
                if line.startswith("READY"):
                    (info if info is not None else {}).update(pid=proc.pid, **json.loads(line[5:]))
                    break
            else:
                raise RuntimeError(f"the app did not start (exit code {proc.wait()})")
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # never let its output block it
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)


def _serve(argv: list[str], fake: bool = False) -> None:
    """Child process: launch the app with these flags (block=False), serve until stdin closes.

    `fake`: the same /chat endpoint and /v1 routes around an instant fake model, to time the transport alone.
    """
    from llama_space.settings import load_settings

    if "--gradio-poll" in argv:  # bench-only: Gradio's own queue polling (1 ms, progress 10 ms), not the app's
        argv.remove("--gradio-poll")
        from llama_space.web import ui

        ui.QUEUE_POLL_S, ui.PROGRESS_POLL_S = 0.001, 0.01
    settings = load_settings(argv, environ={})
    dtype = ""
    if fake:
        demo = _launch_fake(settings)
    else:
        from llama_space.web.server import launch

        demo, app = launch(settings, block=False)
        dtype = str(app.state.backend.model.dtype).removeprefix("torch.")
    print("READY", json.dumps({"dtype": dtype}), flush=True)
    sys.stdin.read()
    demo.close()


class FakeStream:
    """A GenerationStream stand-in that yields `max_new_tokens` one-word chunks at once."""

    def __init__(self, n: int) -> None:
        self.n, self.prompt_tokens, self.completion_tokens = n, 1, 0
        self.finish_reason, self.dropped_messages = "length", 0
        self.time_to_first_token, self.tokens_per_second = 0.0, 0.0

    def __iter__(self) -> Iterator[str]:
        for _ in range(self.n):
            self.completion_tokens += 1
            yield "word "

    def close(self) -> None:
        pass


class FakeBackend:
    """A ChatBackend (inference/backend.py) that answers instantly, for timing the routes and the queue alone."""

    base_name, context_window, tokenizer = "fake", 8192, None

    def __init__(self, settings) -> None:
        self.settings = settings

    def load(self) -> FakeBackend:
        return self

    def close(self) -> None:
        pass

    def stream(self, messages, params, adapter: str = "", tools=None) -> FakeStream:
        return FakeStream(params.max_new_tokens)

    def generate(self, messages, params, adapter: str = "", tools=None) -> str:
        return "".join(self.stream(messages, params, adapter))

    def list_adapters(self) -> list[str]:
        return []

    def check_adapter(self, name: str) -> str:
        from llama_space.errors import NotFoundError

        if name:
            raise NotFoundError(f"Adapter {name!r} not found: the fake model has none.")
        return ""

    def unload_adapter(self, name: str) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def _launch_fake(settings):
    import gradio as gr

    from llama_space.web.routes import api_routes
    from llama_space.web.ui import with_queue
    from llama_space.web.ui.api import register_chat_api

    backend = FakeBackend(settings)
    with gr.Blocks() as demo:
        register_chat_api(backend)
    with_queue(demo, settings)
    demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True,
                app_kwargs={"routes": api_routes(backend, settings)})
    return demo


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve", "serve-fake"])
    known, rest = parser.parse_known_args()
    _serve(rest, fake=known.command == "serve-fake")
