"""The OpenAI-compatible /v1 routes through the official openai SDK, LangChain's ChatOpenAI and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import running_app
from conftest import MODEL_CACHE

KEY = "test-key"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 6}  # "The capital of France is Paris" is 6 tokens


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def url(embedded_dir, adapters_dir):
    # float32: skips the start-up timing of fp32 vs bf16 (seconds on a busy 2-core machine).
    settings = Settings(data_dir=MODEL_CACHE.parent, adapters_dir=adapters_dir, api_key=KEY, dtype="float32")
    with running_app(settings) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def raw(url: str, body, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(url + "/v1/chat/completions", content=content, headers=headers, timeout=120)


def test_non_streamed_completion_has_text_usage_and_finish_reason(client):
    reply = client.chat.completions.create(model=BASE, messages=FRANCE, temperature=0, max_tokens=40)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and reply.object == "chat.completion" and reply.model == BASE
    usage = reply.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_is_the_same_streamed_non_streamed_and_over_post_root(client, url):
    whole = client.chat.completions.create(model="base", messages=FRANCE, **GREEDY)
    chunks = list(client.chat.completions.create(model="base", messages=FRANCE, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rest = httpx.post(url + "/", json={"prompt": FRANCE[0]["content"], "temperature": 0, "max_new_tokens": 6},
                      timeout=120).json()["response"]
    assert whole.choices[0].message.content == streamed == rest and "Paris" in rest
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage(url):
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": FRANCE, "stream": True, **GREEDY}, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" and "usage" not in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_stop_and_seed(client):
    short = client.chat.completions.create(model=BASE, messages=FRANCE, temperature=0, max_completion_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    cut = client.chat.completions.create(model=BASE, messages=FRANCE, stop=["Paris", "nowhere"], **GREEDY)
    assert cut.choices[0].message.content.rstrip() == "The capital of France is"
    assert cut.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model=BASE, messages=FRANCE, temperature=1.0, max_tokens=6,
                                              seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_system_and_developer_messages_and_text_parts(client):
    messages = [{"role": "developer", "content": "Answer in one word."},
                {"role": "user", "content": [{"type": "text", "text": "What is the capital of "},
                                             {"type": "text", "text": "France?"}]}]
    reply = client.chat.completions.create(model=BASE, messages=messages, **GREEDY)
    assert reply.choices[0].message.content


def test_models_lists_base_and_adapters_without_restart(client, adapters_dir, embedded_dir):
    assert [m.id for m in client.models.list()] == [BASE]
    assert client.models.retrieve(BASE).id == BASE
    assert client.models.retrieve(BASE).model_extra["max_model_len"] == 8192  # SmolLM2's window: it fits in RAM
    random_adapter(embedded_dir, adapters_dir / "pirate", seed=5, alpha=64, base_model="")
    assert [m.id for m in client.models.list()] == [BASE, "pirate"]
    assert client.models.retrieve("pirate").owned_by == "llama-space"
    reply = client.chat.completions.create(model="pirate", messages=FRANCE, **GREEDY)
    base = client.chat.completions.create(model=BASE, messages=FRANCE, **GREEDY)
    assert reply.model == "pirate" and reply.choices[0].message.content != base.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=FRANCE, max_tokens=2)
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "gpt-4o" in info.value.message and BASE in info.value.message


def test_langchain_chat_openai_invoke_and_stream(url, client):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url + "/v1", api_key=KEY, model=BASE, temperature=0, max_tokens=6,
                     max_retries=0, stream_usage=True)
    expected = client.chat.completions.create(model=BASE, messages=FRANCE, **GREEDY).choices[0].message.content
    answer = llm.invoke("What is the capital of France?")
    assert answer.content == expected and answer.usage_metadata["output_tokens"] == 6
    parts = list(llm.stream("What is the capital of France?"))
    assert "".join(p.content for p in parts) == expected and len(parts) > 2
    assert sum((p.usage_metadata or {}).get("output_tokens", 0) for p in parts) == 6


def test_bearer_key_is_required(url, client):
    for key, says in [(None, "Missing API key"), ("wrong", "Incorrect API key")]:
        reply = raw(url, {"model": BASE, "messages": FRANCE}, key=key)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"] == {"message": reply.json()["error"]["message"],
                                         "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        assert says in reply.json()["error"]["message"]
    assert httpx.get(url + "/v1/models").status_code == 401
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=BASE, messages=FRANCE)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


@pytest.mark.parametrize(("body", "param", "says"), [
    (b"{not json", None, "not valid JSON"),
    (b"[]", None, "JSON object"),
    ({"model": BASE}, "messages", "messages must be a non-empty list"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": "hello"}, "messages", "non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, None, "chat template has no tool support"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "role system, developer, user"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "string or a list of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "images"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "messages", "end with a user message"),
    ({"messages": FRANCE, "n": 2}, "n", "n=2 is not supported"),
    # SmolLM2's ChatML template ignores tools=, so tools cannot reach the model.
    ({"messages": FRANCE, "tools": [{"type": "function", "function": {"name": "f"}}]}, None,
     "chat template has no tool support"),
    ({"messages": FRANCE, "tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"messages": FRANCE, "logprobs": True}, "logprobs", "logprobs is not supported"),
    ({"messages": FRANCE, "response_format": {"type": "json_object"}}, None, "cannot constrain its output to JSON"),
    ({"messages": FRANCE, "response_format": {"type": "yaml"}}, "response_format", "must be one of"),
    ({"messages": FRANCE, "frequency_penalty": -3}, "frequency_penalty", "between -2.0 and 2.0"),
    ({"messages": FRANCE, "logit_bias": {"1": "up"}}, "logit_bias", "must be a number"),
    ({"messages": FRANCE, "max_tokens": 0}, "max_tokens", "between 1 and 4096"),
    ({"messages": FRANCE, "max_tokens": 100000}, "max_tokens", "between 1 and 4096"),
    ({"messages": FRANCE, "max_completion_tokens": "5"}, "max_completion_tokens", "whole number"),
    ({"messages": FRANCE, "temperature": 2.5}, "temperature", "between 0 and 2"),
    ({"messages": FRANCE, "temperature": "hot"}, "temperature", "must be a number"),
    ({"messages": FRANCE, "top_p": 0}, "top_p", "top_p must be greater than 0"),
    ({"messages": FRANCE, "stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
    ({"messages": FRANCE, "stop": 5}, "stop", "up to 4"),
    ({"messages": FRANCE, "stream": "yes"}, "stream", "true or false"),
    ({"messages": FRANCE, "stream_options": {"include_usage": 1}}, "include_usage", "true or false"),
    ({"messages": FRANCE, "seed": 1.5}, "seed", "whole number"),
    ({"messages": FRANCE, "model": 7}, "model", "must be a string"),
])
def test_bad_requests_get_openai_errors(url, body, param, says):
    reply = raw(url, body)
    assert reply.status_code == 400 and "Traceback" not in reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]


def test_sdk_reports_bad_requests(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=BASE, messages=FRANCE, n=3)
    assert info.value.param == "n" and "not supported" in info.value.message
