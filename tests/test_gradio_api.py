"""The /chat and /generate Gradio endpoints through gradio_client: streaming, non-streaming and errors."""

from __future__ import annotations

import itertools

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(embedded_app):
    return Client(embedded_app.url, verbose=False)


def test_chat_streams_growing_replies_equal_to_generate(client):
    job = client.submit(message=QUESTION, max_new_tokens=20, temperature=0.0, api_name="/chat")
    updates = list(job)
    final = job.result()
    generated = client.predict(prompt=QUESTION, adapter="base", max_new_tokens=20, temperature=0.0,
                               api_name="/generate")
    assert final == generated and "Paris" in final
    assert len(updates) > 1 and updates[-1] == final
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(updates))


def test_chat_takes_history_and_keywords(client):
    history = [{"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Nice to meet you, Ada!"}]
    reply = client.predict(message="What is my name?", history=history, system_prompt="Be brief.",
                           adapter="", max_new_tokens=12, temperature=0, top_p=1.0, api_name="/chat")
    assert "Ada" in reply


@pytest.mark.parametrize(("endpoint", "kwargs", "says"), [
    ("/chat", {"message": ""}, "The message is empty"),
    ("/chat", {"message": QUESTION, "history": [{"role": "robot", "content": "x"}]}, "history item 0"),
    ("/chat", {"message": QUESTION, "adapter": "nope"}, "Unknown adapter 'nope'"),
    ("/generate", {"prompt": "   "}, "The message is empty"),
    ("/generate", {"prompt": QUESTION, "max_new_tokens": 100000}, "max_new_tokens must be at most 4096"),
    ("/generate", {"prompt": QUESTION, "temperature": 9.0}, "temperature must be between"),
    ("/generate", {"prompt": QUESTION, "top_p": 0.0}, "top_p must be greater than 0"),
    ("/generate", {"prompt": QUESTION, "top_k": -1}, "top_k must be between"),
])
def test_errors_come_back_as_app_errors(client, endpoint, kwargs, says):
    with pytest.raises(AppError, match=says):
        client.predict(**{"max_new_tokens": 8, **kwargs}, api_name=endpoint)
