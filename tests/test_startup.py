"""Start-up: no request sees a half-built app, Gradio's scratch lives in the app's own data dir, and an idle app
leaves the CPU to the model."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx

from llama_space.settings import Settings

from apputil import LOOPBACK, free_port


def test_routes_answer_from_the_first_moment_the_port_does(tiny_model_dir, tmp_path):
    """POST / and /v1/models are there the moment the port accepts a connection (they were 405/404 for about
    a second when the routes were added after launch() returned)."""
    from llama_space.web.server import launch

    port = free_port()
    settings = Settings(model=str(tiny_model_dir), host=LOOPBACK, port=port, data_dir=tmp_path / "data",
                        adapters_dir=tmp_path / "adapters")
    launched: list = []
    starting = threading.Thread(target=lambda: launched.append(launch(settings, block=False)), daemon=True)
    starting.start()
    deadline = time.monotonic() + 120
    while True:  # the first moment a TCP connection is accepted
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the app never opened its port"
            time.sleep(0.005)
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=60) as http:
            rest = http.post("/", json={"prompt": "Hi", "max_new_tokens": 2})
            models = http.get("/v1/models")
        assert rest.status_code == 200 and "response" in rest.json(), (rest.status_code, rest.text[:200])
        assert models.status_code == 200 and models.json()["data"], (models.status_code, models.text[:200])
    finally:
        starting.join(120)
        launched[0][0].close()


def test_gradio_scratch_is_the_apps_own(tiny_model_dir, tmp_path, monkeypatch):
    """Uploads go under the data dir, and the janitor never touches the system temp dir other apps share."""
    from apputil import launched_app

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    with launched_app(settings) as app:
        uploads = app.app.uploaded_file_dir
    assert os.path.realpath(uploads).startswith(os.path.realpath(tmp_path / "data")), uploads


def _context_switches(thread_id: int) -> int:
    with open(f"/proc/self/task/{thread_id}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def test_an_idle_apps_event_loop_sleeps(tiny_model_dir, tmp_path):
    """Gradio's queue polls for work every 1 ms by default: ~1,100 wake-ups a second that preempt the decoding
    threads on a small CPU. Ours polls every 10 ms (about 110 a second, progress included)."""
    import pytest

    from apputil import launched_app

    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    with launched_app(settings) as app:
        loop_thread = app.demo.server.thread.native_id
        if not os.path.exists(f"/proc/self/task/{loop_thread}/status"):
            pytest.skip("needs Linux's per-thread /proc counters")
        time.sleep(0.5)  # start-up work done
        before = _context_switches(loop_thread)
        time.sleep(2)
        per_second = (_context_switches(loop_thread) - before) / 2
    assert per_second < 250, f"the idle event loop woke {per_second:.0f} times a second"


def test_zip_download_follows_the_change_rule(tmp_path):
    """On an app anyone can reach without a password, adapter weights are not handed out (as delete and push)."""
    from types import SimpleNamespace

    import pytest

    from llama_space.errors import UserError
    from llama_space.service.actions import Actions
    from llama_space.service.permissions import Permissions

    exposed = Settings(host="0.0.0.0", adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data")
    backend = SimpleNamespace(settings=exposed, unload_adapter=lambda name: None)
    actions = Actions(backend, runner=None, permissions=Permissions(exposed))
    for action in (lambda: actions.zip("mine"), lambda: actions.delete_adapter("mine"),
                   lambda: actions.push("mine", "me/mine")):
        with pytest.raises(UserError, match="reachable by anyone without a password"):
            action()
