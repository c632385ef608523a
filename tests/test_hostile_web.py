"""Hostile visitors at the door: other sites' pages, rebound host names, forged forwarding headers, password
guessing, oversized uploads and malformed Gradio calls, each through a real HTTP client against a running app."""

from __future__ import annotations

import base64
import math
import time

import httpx
import pytest

from llama_space.settings import Settings
from llama_space.web import throttle

from adapterutil import random_adapter
from apputil import launched_app

USER, PASSWORD, API_KEY = "alice", "s3cret", "k-123"
EVIL = "https://evil.example"
FRIEND = "https://friend.example"
PROMPT = {"prompt": "Hello", "max_new_tokens": 2, "temperature": 0}
CHAT = {"model": "base", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def signed_in(tiny_model_dir, tmp_path_factory):
    """An app behind --auth and an API key, answering to llama.example.com, with one adapter; and a logged-in
    browser session (its cookies) for that name."""
    root = tmp_path_factory.mktemp("web")
    random_adapter(tiny_model_dir, root / "adapters" / "victim")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
                        auth=f"{USER}:{PASSWORD}", api_key=API_KEY, allowed_hosts="llama.example.com",
                        allowed_origins=FRIEND, max_upload_mb=1)
    with launched_app(settings) as app, httpx.Client(base_url=app.url, timeout=60) as http:
        host = f"llama.example.com:{port_of(app.url)}"
        login = http.post("/login", data={"username": USER, "password": PASSWORD}, headers={"Host": host})
        assert login.status_code == 200, login.text
        yield {"app": app, "http": http, "host": host, "root": root, "login": login}


@pytest.fixture(scope="module")
def loopback(tiny_model_dir, tmp_path_factory):
    """An app on loopback without auth (changes allowed), with one adapter."""
    root = tmp_path_factory.mktemp("loopback")
    random_adapter(tiny_model_dir, root / "adapters" / "victim")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
                        max_upload_mb=1)
    with launched_app(settings) as app, httpx.Client(base_url=app.url, timeout=60) as http:
        yield {"app": app, "http": http, "root": root}


def delete_adapter(http: httpx.Client, headers: dict) -> httpx.Response:
    return http.post("/gradio_api/call/delete_adapter", json={"data": ["victim"]}, headers=headers)


def test_other_sites_cannot_act_with_the_visitors_login(signed_in):
    http, host, root = signed_in["http"], signed_in["host"], signed_in["root"]
    cookies = signed_in["login"].cookies
    # The browser asks first (a JSON POST is not a "simple" request): no permission for evil.example.
    preflight = http.options("/gradio_api/call/delete_adapter", headers={
        "Host": host, "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert EVIL not in preflight.headers.get("access-control-allow-origin", "")
    assert preflight.headers.get("access-control-allow-origin") != "*"
    # Sent anyway (or as a simple text/plain request), with the victim's cookie: refused, nothing deleted.
    for content_type in ("application/json", "text/plain"):
        attack = http.post("/gradio_api/call/delete_adapter", content=b'{"data": ["victim"]}', cookies=cookies,
                           headers={"Host": host, "Origin": EVIL, "Content-Type": content_type})
        assert attack.status_code == 403 and "--allowed-origins" in attack.json()["error"], attack.text
        assert EVIL not in attack.headers.get("access-control-allow-origin", "")
    reading = http.get("/gradio_api/info", cookies=cookies, headers={"Host": host, "Origin": EVIL})
    assert reading.status_code == 403
    assert (root / "adapters" / "victim" / "adapter_config.json").exists()
    # The app's own page (same origin) works with the same cookie.
    own = http.get("/gradio_api/info", cookies=cookies, headers={"Host": host, "Origin": f"http://{host}"})
    assert own.status_code == 200, own.text


def test_an_origin_the_operator_lists_may_call_with_credentials(signed_in):
    http, host = signed_in["http"], signed_in["host"]
    preflight = http.options("/v1/models", headers={"Host": host, "Origin": FRIEND,
                                                     "Access-Control-Request-Method": "GET"})
    assert preflight.headers["access-control-allow-origin"] == FRIEND
    assert preflight.headers["access-control-allow-credentials"] == "true"
    listed = http.get("/v1/models", headers={"Host": host, "Origin": FRIEND, "Authorization": f"Bearer {API_KEY}"})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == FRIEND


def test_the_login_cookie_stays_on_this_site(signed_in):
    cookies = signed_in["login"].headers.get_list("set-cookie")
    assert len(cookies) == 2
    for cookie in cookies:
        assert "samesite=lax" in cookie.lower() and "samesite=none" not in cookie.lower(), cookie


def test_a_rebound_host_name_is_refused(loopback):
    http, root, port = loopback["http"], loopback["root"], port_of(loopback["app"].url)
    rebound = f"rebind.attacker.example:{port}"
    attack = delete_adapter(http, {"Host": rebound, "Origin": f"http://{rebound}"})
    assert attack.status_code == 400 and "--allowed-hosts" in attack.json()["error"], attack.text
    assert http.get("/", headers={"Host": rebound}).status_code == 400
    assert http.post("/", json=PROMPT, headers={"Host": rebound}).status_code == 400
    assert (root / "adapters" / "victim" / "adapter_config.json").exists()
    for own in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert http.get("/gradio_api/info", headers={"Host": own}).status_code == 200, own


def test_forwarded_host_is_believed_only_from_a_trusted_proxy(loopback, tiny_model_dir, tmp_path):
    forged = {"X-Forwarded-Host": "phish.example", "X-Forwarded-Proto": "https"}
    config = loopback["http"].get("/config", headers=forged)
    assert config.status_code == 200 and "phish.example" not in config.text
    settings = Settings(model=str(tiny_model_dir), adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data",
                        trusted_proxies="127.0.0.1", allowed_hosts="proxy.example")
    with launched_app(settings) as app:
        behind = httpx.get(app.url + "/config", headers={"X-Forwarded-Host": "proxy.example"}, timeout=60)
        assert behind.status_code == 200 and "proxy.example" in behind.text


def test_json_routes_take_json_only(loopback):
    http = loopback["http"]
    body = b'{"prompt": "Hello", "max_new_tokens": 2}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        rest = http.post("/", content=body, headers={"Content-Type": content_type})
        assert rest.status_code == 415 and "application/json" in rest.json()["error"], rest.text
        openai = http.post("/v1/chat/completions", content=body, headers={"Content-Type": content_type})
        assert openai.status_code == 415 and openai.json()["error"]["code"] == "unsupported_media_type"
    assert http.post("/", json=PROMPT).status_code == 200
    charset = http.post("/", content=b'{"prompt": "Hi", "max_new_tokens": 2}',
                        headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status_code == 200, charset.text


def test_guessing_is_slowed_and_the_right_password_works_after_the_wait(signed_in):
    host = signed_in["host"]
    http = httpx.Client(base_url=signed_in["app"].url, timeout=60)  # no login cookie
    ledger = signed_in["app"].app.state.login_failures
    ledger.forget()
    tries = [lambda: http.post("/", json=PROMPT, headers={"Host": host, **basic(USER, "guess")}),
             lambda: http.post("/login", data={"username": USER, "password": "guess"}, headers={"Host": host}),
             lambda: http.get("/v1/models", headers={"Host": host, "Authorization": "Bearer guess"})]
    statuses = [tries[i % 3]().status_code for i in range(throttle.FREE_FAILURES)]
    assert statuses == [401, 400, 401, 401, 400]
    blocked = http.post("/", json=PROMPT, headers={"Host": host, **basic(USER, PASSWORD)})
    assert blocked.status_code == 429 and "wait" in blocked.json()["error"]
    wait = int(blocked.headers["retry-after"])
    assert wait == math.ceil(throttle.BASE_DELAY)
    # Browsing without credentials is never slowed.
    assert http.get("/", headers={"Host": host}).status_code == 200
    time.sleep(wait + 0.1)
    assert http.post("/", json=PROMPT, headers={"Host": host, **basic(USER, PASSWORD)}).status_code == 200
    assert http.post("/", json=PROMPT, headers={"Host": host, **basic(USER, "guess")}).status_code == 401


def test_the_wait_doubles_with_each_failure_up_to_the_cap():
    now = [0.0]
    ledger = throttle.FailureLedger(clock=lambda: now[0])
    waits = []
    for _ in range(throttle.FREE_FAILURES + 12):
        ledger.failed("10.0.0.1")
        waits.append(ledger.wait("10.0.0.1"))
    assert waits[:throttle.FREE_FAILURES - 1] == [0.0] * (throttle.FREE_FAILURES - 1)
    assert waits[throttle.FREE_FAILURES - 1:throttle.FREE_FAILURES + 2] == [1.0, 2.0, 4.0]
    assert waits[-1] == throttle.MAX_DELAY
    assert ledger.wait("10.0.0.2") == 0.0
    ledger.succeeded("10.0.0.1")
    assert ledger.wait("10.0.0.1") == 0.0


def upload(http: httpx.Client, *sizes: int) -> httpx.Response:
    files = [("files", (f"f{i}.jsonl", b"x" * size, "application/octet-stream")) for i, size in enumerate(sizes)]
    return http.post("/gradio_api/upload", files=files)


def test_uploads_are_bounded_per_request_and_per_visitor(loopback):
    http = loopback["http"]
    mb = 1024 * 1024
    assert upload(http, mb // 2).status_code == 200
    many = upload(http, *[mb // 2] * 3)
    assert many.status_code == 413 and "one file of at most 1 MB" in many.json()["error"], many.text

    def chunks():  # one file of 1.5 MB, sent chunked: no Content-Length tells its size in advance
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jsonl"\r\n\r\n'
        for _ in range(3):
            yield b"x" * (mb // 2)
        yield b"\r\n--b--\r\n"
    streamed = http.post("/gradio_api/upload", content=chunks(),
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    # The quota is 20 full-size files; these are 0.9 MB each, on top of what came before.
    replies = [upload(http, mb - 100 * 1024) for _ in range(23)]
    statuses = [reply.status_code for reply in replies]
    assert statuses[:18] == [200] * 18 and statuses[-1] == 429, statuses
    assert "try again later" in replies[-1].json()["error"] and replies[-1].headers["retry-after"]
    assert http.post("/", json=PROMPT).status_code == 200  # and the app keeps serving


def test_gradio_refusals_hold_no_internals(loopback):
    http = loopback["http"]
    event = http.post("/gradio_api/call/generate", json={"data": ["hi"]})
    text = event.text if event.status_code != 200 else http.get(
        f"/gradio_api/call/generate/{event.json()['event_id']}").text
    assert "event: error" in text or event.status_code >= 400, text
    for internal in ("object at 0x", "gradio.components", "/tmp", str(loopback["root"])):
        assert internal not in text, text
    assert "takes 8 values" in text and "sent 1" in text, text
    unknown = http.post("/gradio_api/queue/join", json={"data": [], "fn_index": 98765, "session_hash": "abc"})
    assert 400 <= unknown.status_code < 500, (unknown.status_code, unknown.text)
    assert http.post("/", json=PROMPT).status_code == 200
