"""Hostile generation requests through the Gradio API: a bad number or a huge conversation gets its own clear
error, and the queue and the generation places are whole afterwards (issue 19, findings 1 and 4).

A fractional top_k once failed inside the batch engine before the request's error handling: the request never
ended, kept its Gradio worker and its admission place, and 24 of them wedged every endpoint ("Queue is full").
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from llama_space.inference.prompting import FIT_TRIES

ANSWER_SECONDS = 60  # far beyond what a 5-token reply of the tiny model takes, even on a busy machine
# /generate(prompt, system_prompt, adapter, max_new_tokens, temperature, top_p, top_k, repetition_penalty)
FRACTIONAL_TOP_K = ["hi", "", "", 5, 0.5, 0.9, 50.5, 1.0]  # the exact request of the report
WHOLE_TEMPERATURE = ["hi", "", "", 5, 1, 0.9, 50, 1.0]  # an ordinary client's temperature=1


@pytest.fixture(scope="module")
def app(tiny_app):
    return tiny_app


@pytest.fixture
def http(app):
    # The read timeout outlasts Gradio's 15 s heartbeats; `answer` bounds the whole wait itself.
    with httpx.Client(base_url=app.url, timeout=30) as client:
        yield client


def post(http: httpx.Client, api: str, data: list) -> str:
    """Queue a call of the named endpoint; its event id."""
    event = http.post(f"/gradio_api/call/{api}", json={"data": data})
    assert event.status_code == 200, event.text
    return event.json()["event_id"]


def answer(http: httpx.Client, api: str, event_id: str) -> tuple[str, object]:
    """("complete" or "error", the last data) of a queued call; fails when it has not ended within
    ANSWER_SECONDS (a wedged request only ever sends heartbeats)."""
    deadline = time.monotonic() + ANSWER_SECONDS
    kind, data = "", None
    with http.stream("GET", f"/gradio_api/call/{api}/{event_id}") as response:
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"{api} gave no answer in {ANSWER_SECONDS} s"
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind in ("complete", "error"):
                return kind, json.loads(line.removeprefix("data: "))
    return kind, data


def call(http: httpx.Client, api: str, data: list) -> tuple[str, object]:
    return answer(http, api, post(http, api, data))


def storm(http: httpx.Client, calls: list[tuple[str, list]]) -> list[tuple[str, object]]:
    """Queue every (api, data) at once, then read every answer."""
    events = [(api, post(http, api, data)) for api, data in calls]
    return [answer(http, api, event_id) for api, event_id in events]


def places_are_whole(app, http: httpx.Client) -> None:
    """No request holds an admission place or KV-cache tokens, and as many /generate calls as the queue takes
    (max_queue waiting plus concurrency running) all get their answers."""
    admission = app.backend.admission
    assert (admission.in_flight, admission.tokens_in_use) == (0, 0)
    full = app.settings.max_queue + app.settings.concurrency
    answers = storm(http, [("generate", ["hi", "", "", 2, 0.0, 1.0, 0, 1.0])] * full)
    assert all(kind == "complete" and isinstance(data[0], str) for kind, data in answers), answers
    assert (admission.in_flight, admission.tokens_in_use) == (0, 0)


def test_a_storm_of_fractional_top_k_gets_clear_errors_and_leaves_the_app_serving(app, http):
    answers = storm(http, [("generate", FRACTIONAL_TOP_K)] * (app.settings.max_queue + app.settings.concurrency))
    for kind, data in answers:
        assert kind == "error" and "top_k must be a whole number" in str(data), (kind, data)
    kind, data = call(http, "chat", ["hi", [], "", "", 5, 0.5, 0.9, 50.5, 1.0])
    assert kind == "error" and "top_k must be a whole number" in str(data), (kind, data)
    kind, data = call(http, "generate", ["hi", "", "", 2.5, 0.5, 0.9, 50, 1.0])
    assert kind == "error" and "max_new_tokens must be a whole number" in str(data), (kind, data)
    places_are_whole(app, http)


@pytest.mark.parametrize("api, data", [("generate", WHOLE_TEMPERATURE), ("chat", ["hi", [], *WHOLE_TEMPERATURE[1:]]),
                                       ("generate", ["hi", "", "", 5.0, 0.5, 0.9, 40.0, 2])],
                         ids=["generate-temperature-1", "chat-temperature-1", "whole-floats-and-int-penalty"])
def test_whole_numbers_of_either_type_just_work(app, http, api, data):
    kind, reply = call(http, api, data)
    assert kind == "complete" and isinstance(reply[0], str), (kind, reply)
    places_are_whole(app, http)


def test_a_huge_conversation_is_refused_without_encoding_it(app, http, monkeypatch):
    """A 200k-character system prompt and 1000 one-character turns (once ~80 CPU seconds of encoding, again
    for every dropped turn) get a clear error before the chat template ever runs."""
    tokenizer = app.backend.tokenizer
    calls = []
    apply = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **kw: calls.append(1) or apply(*a, **kw))
    history = [{"role": role, "content": "x"} for _ in range(1000) for role in ("user", "assistant")]
    kind, data = call(http, "chat", ["x", history, "s" * 200_000, "", 5, 0.0, 1.0, 0, 1.0])
    assert kind == "error" and "too long" in str(data), (kind, str(data)[:300])
    assert not calls
    kind, data = call(http, "chat", ["the newest question", history, "Be brief.", "", 5, 0.0, 1.0, 0, 1.0])
    assert kind == "complete" and isinstance(data[0], str), (kind, str(data)[:300])
    assert len(calls) <= 3 + FIT_TRIES  # a few encodings, not one per dropped turn
    places_are_whole(app, http)
