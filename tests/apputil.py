"""Launching the whole app in-process on a free loopback port, for tests that use real clients.

    from apputil import running_app

    @pytest.fixture(scope="module")
    def base_url(tiny_model_dir, tmp_path_factory):
        settings = Settings(model=str(tiny_model_dir), adapters_dir=tmp_path_factory.mktemp("adapters"))
        with running_app(settings) as url:
            yield url  # "http://127.0.0.1:PORT": UI at /, Gradio API, POST /, /v1

`launched_app` yields a LaunchedApp instead, for tests that also need the manager or the Blocks;
`embedded_settings` runs the embedded model without converting it again.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.settings import Settings

from conftest import MODEL_CACHE

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from llama_space.inference.backend import ChatBackend

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def embedded_settings(root: Path) -> Settings:
    """Settings for the embedded model with data and adapters under `root`, whose model cache is the shared
    converted checkpoint (converting takes ~20 s)."""
    (root / "data").mkdir()
    (root / "data" / "cache").symlink_to(MODEL_CACHE.resolve(), target_is_directory=True)
    return Settings(adapters_dir=root / "adapters", data_dir=root / "data")


@dataclasses.dataclass
class LaunchedApp:
    """A running app: its base URL, the Gradio Blocks, the FastAPI app and the settings it runs with."""

    url: str
    demo: gr.Blocks
    app: FastAPI
    settings: Settings

    @property
    def backend(self) -> ChatBackend:
        return self.app.state.backend


@contextmanager
def launched_app(settings: Settings, attempts: int = 3) -> Iterator[LaunchedApp]:
    """Serve `settings` on loopback and a free port (host/port replaced) until the block ends.

    Everything `launch` serves is there: the UI, the Gradio API, POST / and /v1. It starts again on
    another port in the rare case of the free port being taken before the server binds it.
    """
    from llama_space.web.server import launch

    for attempt in range(attempts):
        settings = dataclasses.replace(settings, host=LOOPBACK, port=free_port())
        try:
            demo, app = launch(settings, block=False)
            break
        except OSError:
            if attempt == attempts - 1:
                raise
    try:
        yield LaunchedApp(f"http://{LOOPBACK}:{settings.port}", demo, app, settings)
    finally:
        demo.close()


@contextmanager
def running_app(settings: Settings) -> Iterator[str]:
    """Serve `settings` on loopback and a free port until the block ends; yields the base URL."""
    with launched_app(settings) as launched:
        yield launched.url


def wait_for_job(client, job_id: str, timeout: float = 600) -> dict:
    """Poll /job_status until the job is neither queued nor running; its last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id=job_id, api_name="/job_status")
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {status}")
