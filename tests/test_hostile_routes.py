"""Client mistakes get a 4xx in the route's own error shape, and adapter files never follow links (issue 19, F9).

One app (tiny model) over real HTTP: POST / and /v1 with bodies a careless or hostile client sends, the adapter
zip (the Adapters tab's download button, a hidden UI event) and /delete_adapter on adapters that are symbolic
links or hold them, and the CSV formula warning of /validate_dataset.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import launched_app

SECRET = "canary-41d2: a file outside the adapters folder"
JSON = {"content-type": "application/json"}
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """The running app; adapters: `real` (a plain folder), `leaky` (a folder with a link to a secret file) and
    `linked` (a link to an adapter folder outside the adapters dir)."""
    root = tmp_path_factory.mktemp("hostile-routes")
    (root / "outside").mkdir()
    secret = root / "outside" / "secret.txt"
    secret.write_text(SECRET)
    adapters = root / "adapters"
    random_adapter(tiny_model_dir, adapters / "real", seed=1)
    random_adapter(tiny_model_dir, adapters / "leaky", seed=2)
    (adapters / "leaky" / "notes.txt").symlink_to(secret)
    random_adapter(tiny_model_dir, root / "outside" / "kept", seed=3)
    (adapters / "linked").symlink_to(root / "outside" / "kept", target_is_directory=True)
    settings = Settings(model=str(tiny_model_dir), adapters_dir=adapters, data_dir=root / "data")
    with launched_app(settings) as app, httpx.Client(base_url=app.url, timeout=120) as http:
        yield {"app": app, "root": root, "http": http, "client": Client(app.url, verbose=False)}


def refused(response: httpx.Response, status: int = 400) -> str:
    """The error text of a refused request, which must have `status` (never a 500)."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    return response.text


def openai_error(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped 400."""
    refused(response)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", error
    return error["message"]


def rest_error(response: httpx.Response) -> str:
    """The message of a POST / 400 ({"error", "status"})."""
    refused(response)
    body = response.json()
    assert body["status"] == 400, body
    return body["error"]


@pytest.mark.parametrize("key", ["²", "٣", "1" * 5000, "-1", " 7"])
def test_logit_bias_keys_that_are_no_token_id_are_400s(world, key):
    for route, extra in (("/v1/chat/completions", {"messages": HELLO}), ("/v1/completions", {"prompt": "Hi"})):
        message = openai_error(world["http"].post(route, json={**extra, "logit_bias": {key: 1}}))
        assert "logit_bias" in message and "token id" in message, message


def test_tool_call_arguments_nested_too_deeply_are_a_400(world):
    deep = "[" * 100_000 + "]" * 100_000
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call-1", "type": "function", "function": {"name": "weather", "arguments": deep}}]},
                {"role": "tool", "tool_call_id": "call-1", "content": "sunny"}]
    message = openai_error(world["http"].post("/v1/chat/completions", json={"messages": messages}))
    assert "messages[1]" in message and "nested too deeply" in message, message


def test_a_lone_surrogate_is_a_400_on_every_route(world):
    http = world["http"]
    message = rest_error(http.post("/", content=b'{"prompt": "Hi \\ud800 there"}', headers=JSON))
    assert "surrogate" in message and "prompt" in message, message
    body = b'{"messages": [{"role": "user", "content": "\\udfff"}]}'
    message = openai_error(http.post("/v1/chat/completions", content=body, headers=JSON))
    assert "surrogate" in message and "messages[0].content" in message, message
    message = openai_error(http.post("/v1/completions", content=b'{"prompt": "\\ud83d"}', headers=JSON))
    assert "surrogate" in message, message
    # A pair of surrogates is one character, and fine.
    reply = http.post("/", content=b'{"prompt": "Hi \\ud83d\\ude00", "max_new_tokens": 2}', headers=JSON)
    assert reply.status_code == 200, reply.text


def ui_event(http: httpx.Client, elem_id: str, data: list) -> dict:
    """Click the button `elem_id` as the browser does (a hidden event, over the queue); the completed message."""
    config = http.get("/config").json()
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    fn_index = next(d["id"] for d in config["dependencies"] if [button, "click"] in d["targets"])
    session = uuid.uuid4().hex
    joined = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                        "trigger_id": button, "event_data": None})
    assert joined.status_code == 200, joined.text
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as events:
        for line in events.iter_lines():
            message = json.loads(line[len("data:"):]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError("the event never completed")


def test_adapter_zips_never_follow_links(world):
    http = world["http"]
    for name, says in (("leaky", "notes.txt"), ("linked", "is a link")):
        done = ui_event(http, "adapter-zip", [name])
        assert not done["success"], done
        error = done["output"]["error"]
        assert "link" in error and says in error and SECRET not in error, error
        assert str(world["root"]) not in error, error
    done = ui_event(http, "adapter-zip", ["real"])
    assert done["success"], done
    zipped = done["output"]["data"][0]  # an update of the download box: shown, holding the zip
    assert zipped["visible"] is True and Path(zipped["value"]["path"]).name == "real.zip"


def test_deleting_a_linked_adapter_is_refused_and_keeps_everything(world):
    client, adapters = world["client"], world["root"] / "adapters"
    with pytest.raises(AppError, match=r"'linked' is a link .*remove the link adapters/linked on the server"):
        client.predict("linked", api_name="/delete_adapter")
    assert (adapters / "linked").is_symlink() and (world["root"] / "outside" / "kept" / "adapter_config.json").is_file()
    assert "linked" in [a["name"] for a in client.predict(api_name="/list_adapters")]
    assert sorted(p.name for p in adapters.iterdir()) == ["leaky", "linked", "real"]  # nothing renamed away
    # A real folder holding a link is deleted with the link; the file the link pointed at stays.
    assert client.predict("leaky", api_name="/delete_adapter") == {"deleted": "leaky"}
    assert (world["root"] / "outside" / "secret.txt").read_text() == SECRET


def test_csv_cells_starting_with_a_tab_or_return_are_warned_about(world, tmp_path):
    path = tmp_path / "formulas.csv"
    path.write_bytes(b'instruction,output\n"\t=cmd|\' /C calc\'!A0",fine\nplain,"\r=1+2"\nok,ok\n')
    report = world["client"].predict(handle_file(str(path)), api_name="/validate_dataset")
    flagged = sorted(w["row"] for w in report["warnings"] if "formula" in w["message"])
    assert flagged == [1, 2], report["warnings"]


def test_the_app_still_serves(world):
    reply = world["http"].post("/", json={"prompt": "Hello", "max_new_tokens": 4, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["status"] == 200
    reply = world["http"].post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
