"""POST / (the tutorial's contract) over real HTTP: curl unchanged, options, adapters, bad requests, failures."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime

import httpx
import openai
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import launched_app


@pytest.fixture(scope="module")
def roomy_tiny_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with a 2048-token context, so the default 512-token reply of a bare request fits."""
    path = tmp_path_factory.mktemp("roomy-tiny") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 2048  # RoPE: no position weights to resize
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def launched(roomy_tiny_dir, adapters_dir):
    with launched_app(Settings(model=str(roomy_tiny_dir), adapters_dir=adapters_dir)) as app:
        yield app


@pytest.fixture(scope="module")
def url(launched):
    return launched.url


def post(url: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(url + "/", content=content, headers={"Content-Type": "application/json"}, timeout=60,
                      **kwargs)


def test_tutorial_curl_command_works_unchanged(url):
    done = subprocess.run(["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json",
                           "-d", '{"prompt": "你好"}'], capture_output=True, text=True, timeout=120, check=False)
    body = json.loads(done.stdout)
    assert set(body) == {"response", "status", "time"}
    assert body["status"] == 200 and isinstance(body["response"], str) and body["response"]
    assert abs((datetime.strptime(body["time"], "%Y-%m-%d %H:%M:%S") - datetime.now()).total_seconds()) < 120


def test_get_root_still_serves_the_gradio_page(url):
    page = httpx.get(url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "gradio" in page.text.lower()


def test_optional_keys_shape_the_reply(url):
    body = {"prompt": "Hello", "system": "Be brief.", "adapter": "base", "max_new_tokens": 5,
            "temperature": 0, "top_p": 0.5}
    first, second = post(url, body), post(url, body)
    assert first.status_code == 200 and first.json()["status"] == 200
    assert first.json()["response"] == second.json()["response"]  # greedy is deterministic
    sampled = post(url, {"prompt": "Hello", "max_new_tokens": 3, "temperature": 1.5})
    assert sampled.status_code == 200


def test_adapter_trained_after_start_is_usable(url, roomy_tiny_dir, adapters_dir):
    assert post(url, {"prompt": "Hi", "adapter": "fresh"}).status_code == 404
    random_adapter(roomy_tiny_dir, adapters_dir / "fresh", seed=3, alpha=64,
                   targets=("q_proj", "v_proj", "o_proj"), base_model="")
    reply = post(url, {"prompt": "Hi", "adapter": "fresh", "max_new_tokens": 4, "temperature": 0})
    assert reply.status_code == 200 and isinstance(reply.json()["response"], str)


@pytest.mark.parametrize(("body", "status", "says"), [
    (b'{"prompt": "unterminated', 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'["a list"]', 400, "JSON object"),
    (b'"just a string"', 400, "JSON object"),
    ({}, 400, "prompt is required"),
    ({"prompt": "   "}, 400, "prompt is required"),
    ({"prompt": 42}, 400, "prompt must be a string"),
    ({"prompt": "hi", "system": ["x"]}, 400, "system must be a string"),
    ({"prompt": "hi", "max_new_tokens": "ten"}, 400, "max_new_tokens must be a whole number"),
    ({"prompt": "hi", "max_new_tokens": 2.5}, 400, "max_new_tokens must be a whole number"),
    ({"prompt": "hi", "max_new_tokens": True}, 400, "max_new_tokens must be a whole number"),
    ({"prompt": "hi", "max_new_tokens": 0}, 400, "max_new_tokens"),
    ({"prompt": "hi", "max_new_tokens": 10**6}, 400, "at most 4096"),
    ({"prompt": "hi", "temperature": "warm"}, 400, "temperature must be a number"),
    ({"prompt": "hi", "temperature": 99}, 400, "temperature must be between"),
    ({"prompt": "hi", "top_p": 1.5}, 400, "top_p must be between"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p must be greater than 0"),
    ({"prompt": "hi", "adapter": "missing"}, 404, "Unknown adapter 'missing'"),
    ({"prompt": "hi", "adapter": "../etc"}, 404, "Unknown adapter"),
    ({"prompt": "hi", "max_tokens": 5}, 400, "Unknown field(s) max_tokens"),
    ({"prompt": "word " * 3000, "max_new_tokens": 8}, 400, "too long"),
])
def test_bad_requests_get_a_json_error(url, body, status, says):
    reply = post(url, body)
    assert reply.status_code == status
    error = reply.json()
    assert error["status"] == status and says in error["error"]
    assert "Traceback" not in reply.text


RAW = "CUDA error: out of memory at /secret/models/weights.safetensors"  # what must never reach a client


def test_a_failing_model_is_a_clean_500_on_every_route(launched, monkeypatch):
    """An unexpected failure inside the model: every surface says the server failed, none shows its text."""
    def broken(*args, **kwargs):
        raise RuntimeError(RAW)

    monkeypatch.setattr(launched.backend.model, "forward", broken)
    reply = post(launched.url, {"prompt": "Hi", "max_new_tokens": 2})
    assert reply.status_code == 500 and reply.json()["status"] == 500
    assert "server failed" in reply.json()["error"]
    sdk = openai.OpenAI(base_url=launched.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.InternalServerError) as whole:
        sdk.chat.completions.create(model="base", messages=messages, max_tokens=2)
    assert whole.value.type == "server_error" and "server failed" in whole.value.message
    with httpx.stream("POST", launched.url + "/v1/chat/completions", timeout=60,
                      json={"model": "base", "messages": messages, "max_tokens": 2, "stream": True}) as events:
        data = [line[6:] for line in events.iter_lines() if line.startswith("data: ")]
    # Headers went out before the failure: an error event, then [DONE], as OpenAI ends a stream.
    assert "server failed" in json.loads(data[-2])["error"]["message"] and data[-1] == "[DONE]"
    client = Client(launched.url, verbose=False)
    gradio_errors = []
    for api, args in (("/generate", ("Hi",)), ("/chat", ("Hi", []))):
        with pytest.raises(AppError) as raised:
            client.predict(*args, api_name=api)
        gradio_errors.append(str(raised.value))
    assert all("server failed" in text for text in gradio_errors), gradio_errors
    for text in (reply.text, whole.value.message, *data, *gradio_errors):
        assert "CUDA" not in text and "/secret" not in text and "Traceback" not in text, text
    monkeypatch.undo()
    assert post(launched.url, {"prompt": "Hi", "max_new_tokens": 2}).status_code == 200
