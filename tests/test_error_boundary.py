"""One error boundary: a problem found before or during a reply reaches REST, /v1 and Gradio alike, clearly.

The app serves a tiny model whose chat template insists that roles alternate, with adapters that fail to
load in three ways (damaged file, weight shapes of another base, out of memory); every case goes through
the real routes with real clients, and the app keeps serving afterwards.
"""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space import adapters
from llama_space.inference.adapter_errors import adapter_load_failure
from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import launched_app

STRICT_TEMPLATE = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HI = [{"role": "user", "content": "Hi"}]
LEAKS = ("Traceback", "SafetensorError", "RuntimeError", "size mismatch", "adapter_model", "safetensors")


@pytest.fixture(scope="module")
def strict_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with a chat template that refuses two user turns in a row."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("strict") / "model"
    shutil.copytree(tiny_model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = STRICT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def app(strict_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("boundary")
    random_adapter(strict_model_dir, root / "adapters" / "good", seed=1)
    damaged = random_adapter(strict_model_dir, root / "adapters" / "damaged", seed=2)
    (damaged / adapters.WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    other = root / "other-base"  # a Llama with other sizes: its LoRA weights cannot fit ours
    _wider_llama(strict_model_dir, other)
    random_adapter(other, root / "adapters" / "misfit", seed=3, base_model=str(strict_model_dir))
    settings = Settings(model=str(strict_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
                        dtype="float32")
    with launched_app(settings) as launched:
        yield launched


def _wider_llama(like, out) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(like)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)


def rest(app, **body) -> httpx.Response:
    return httpx.post(app.url + "/", json={"max_new_tokens": 4, **body}, timeout=120)


def v1(app, **body) -> httpx.Response:
    return httpx.post(app.url + "/v1/chat/completions", json={"max_tokens": 4, **body}, timeout=120)


def v1_stream_events(app, **body) -> list[str]:
    """The `data:` payloads of a streamed /v1 chat completion."""
    with httpx.stream("POST", app.url + "/v1/chat/completions", timeout=120,
                      json={"max_tokens": 4, "stream": True, **body}) as response:
        assert response.status_code == 200, response.read()
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def gradio_error(app, *args, api_name: str) -> str:
    with pytest.raises(AppError) as raised:
        Client(app.url, verbose=False).predict(*args, api_name=api_name)
    return str(raised.value)


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert not any(leak in text for leak in LEAKS), text


@pytest.mark.parametrize("adapter, says", [
    ("damaged", "is damaged: its files cannot be read"),
    ("misfit", "its weight shapes differ from the base model's"),
])
def test_an_adapter_that_fails_to_load_says_why_everywhere(app, adapter, says):
    base_before = rest(app, prompt="Hi", temperature=0).json()["response"]
    reply = rest(app, prompt="Hi", adapter=adapter)
    assert reply.status_code == 400 and says in reply.json()["error"], reply.text
    whole = v1(app, model=adapter, messages=HI)
    assert whole.status_code == 400 and says in whole.json()["error"]["message"], whole.text
    # The adapter loads inside the batch engine, after the stream's headers went out: an error event, then [DONE].
    events = v1_stream_events(app, model=adapter, messages=HI)
    error = json.loads(events[-2])["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error" and events[-1] == "[DONE]"
    shown = gradio_error(app, "Hi", "", adapter, 4, api_name="/generate")
    assert says in shown
    assert_clean(reply.text, whole.text, *events, shown)
    # Nothing of the failed load stays in the model: the base answers as before, other adapters still load.
    assert rest(app, prompt="Hi", temperature=0).json()["response"] == base_before
    assert rest(app, prompt="Hi", adapter="good").status_code == 200


def test_out_of_memory_while_loading_says_so(monkeypatch):
    try:
        import torch

        oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)")
    except AttributeError:  # an older torch without the class
        oom = MemoryError()
    text = adapter_load_failure("big", "base/model", oom)
    assert "not enough memory" in text and "GiB" not in text


def test_a_conversation_the_template_refuses_is_a_400_with_its_message(app):
    twice = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}]
    says = "roles must alternate"
    whole = v1(app, messages=twice)
    assert whole.status_code == 400 and says in whole.json()["error"]["message"], whole.text
    with pytest.raises(openai.BadRequestError, match=says):
        openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="base", messages=twice, max_tokens=4, stream=True)
    history = [{"role": "user", "content": "Hi"}]
    assert says in gradio_error(app, "Hello?", history, "", "", 4, api_name="/chat")
    assert_clean(whole.text)


def test_an_adapter_deleted_mid_reply_ends_that_reply_clearly(app):
    source = app.settings.adapters_dir / "good"
    shutil.copytree(source, app.settings.adapters_dir / "doomed")
    body = {"model": "doomed", "messages": HI, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", app.url + "/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        for line in lines:  # wait for the first piece of text, then delete the adapter through the API
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                break
        Client(app.url, verbose=False).predict("doomed", api_name="/delete_adapter")
        rest_of_stream = [line[6:] for line in lines if line.startswith("data: ")]
    error = json.loads(rest_of_stream[-2])["error"]
    assert "unloaded or deleted while replying" in error["message"] and rest_of_stream[-1] == "[DONE]"
    assert rest(app, prompt="Hi", adapter="good").status_code == 200
