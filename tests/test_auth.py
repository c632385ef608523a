"""Safe sharing: --auth covers every route on the port, the /v1 bearer key, exposure without auth, OAuth rules."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space.errors import UserError
from llama_space.service.permissions import Permissions, oauth_enabled
from llama_space.settings import Settings, load_settings
from llama_space.web import auth, oauth
from llama_space.web.janitor import Janitor

from apputil import free_port, launched_app
from conftest import REPO

ARTIFACTS = REPO / "test-artifacts"
USER, PASSWORD, API_KEY = "alice", "s3cret:with:colons", "sk-test-key"
PROMPT = {"prompt": "Hello", "max_new_tokens": 4, "temperature": 0}
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
# /generate positionally (prompt, system_prompt, adapter, max_new_tokens, temperature, top_p, top_k,
# repetition_penalty): Gradio's raw HTTP API takes every value.
GENERATE_ARGS = ("Hello", "", "", 4, 0.0, 1.0, 50, 1.0)
# Every kind of route on the port, as an anonymous client would try it: (method, path, JSON body).
ANONYMOUS_ATTEMPTS = [
    ("GET", "/config", None),
    ("GET", "/gradio_api/info", None),
    ("GET", "/gradio_api/openapi.json", None),
    ("GET", "/openapi.json", None),
    ("GET", "/gradio_api/file=/etc/passwd", None),
    ("GET", "/gradio_api/file=README.md", None),
    ("POST", "/gradio_api/call/generate", {"data": list(GENERATE_ARGS)}),
    ("POST", "/gradio_api/run/generate", {"data": list(GENERATE_ARGS)}),
    ("POST", "/gradio_api/queue/join", {"data": list(GENERATE_ARGS), "fn_index": 0, "session_hash": "x"}),
    ("GET", "/gradio_api/queue/data?session_hash=x", None),
    ("POST", "/gradio_api/upload", None),
    ("GET", "/gradio_api/call/generate/abc", None),
    ("GET", "/monitoring", None),
    ("POST", "/", PROMPT),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/base", None),
    ("POST", "/v1/chat/completions", CHAT),
]


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def guarded(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
                        auth=f"{USER}:{PASSWORD}", api_key=API_KEY)
    with launched_app(settings) as launched:
        yield launched


def test_auth_comes_from_the_flag_or_the_environment():
    assert load_settings(["--auth", "a:b"], environ={}).auth_pair == ("a", "b")
    from_env = load_settings([], environ={"LLAMA_SPACE_AUTH": "a:b:c", "LLAMA_SPACE_API_KEY": "k"})
    assert from_env.auth_pair == ("a", "b:c") and from_env.api_key == "k"
    assert len(auth.middleware(from_env)) == 1
    assert auth.middleware(Settings()) == []
    for empty in ("alice:", ":secret", ":"):
        with pytest.raises(UserError, match="user name and a password"):
            load_settings(["--auth", empty], environ={})


def test_anonymous_requests_are_refused_everywhere(guarded):
    refused = {}
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        for method, path, body in ANONYMOUS_ATTEMPTS:
            response = http.request(method, path, json=body)
            refused[f"{method} {path}"] = response.status_code
            assert response.status_code == 401, (method, path, response.status_code, response.text[:200])
            assert "root:" not in response.text
        # The page itself is only the login form: no app inside it.
        page = http.get("/")
        assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
        assert "chat-input" not in page.text and "dataset-upload" not in page.text
        # /v1 speaks OpenAI's error shape and asks for the bearer key; POST / asks for Basic credentials.
        openai_refusal = http.get("/v1/models")
        assert openai_refusal.json()["error"]["code"] == "invalid_api_key"
        assert openai_refusal.headers["www-authenticate"] == "Bearer"
        assert http.post("/", json=PROMPT).headers["www-authenticate"].startswith("Basic")
    assert len(refused) == len(ANONYMOUS_ATTEMPTS)


def test_wrong_credentials_are_refused(guarded):
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        for headers in (basic(USER, "wrong"), basic("mallory", PASSWORD), basic(USER, PASSWORD[:-1]),
                        {"Authorization": "Basic not-base64!"}, {"Authorization": "Bearer wrong-key"},
                        {"Cookie": "access-token-unsecure-x=forged; access-token-x=forged"}):
            guarded.app.state.login_failures.forget()  # three failures each, below the throttle's free five
            assert http.post("/", json=PROMPT, headers=headers).status_code == 401, headers
            assert http.get("/v1/models", headers=headers).status_code == 401, headers
            assert http.get("/gradio_api/info", headers=headers).status_code == 401, headers
        # The bearer key opens /v1 only, not the rest of the app.
        guarded.app.state.login_failures.forget()
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        assert http.post("/", json=PROMPT, headers=bearer).status_code == 401
        assert http.get("/gradio_api/info", headers=bearer).status_code == 401


def test_credentials_open_every_route(guarded):
    with httpx.Client(base_url=guarded.url, timeout=120) as http:
        reply = http.post("/", json=PROMPT, headers=basic(USER, PASSWORD))
        assert reply.status_code == 200 and reply.json()["status"] == 200
        assert http.get("/v1/models", headers=basic(USER, PASSWORD)).status_code == 200
        assert http.get("/gradio_api/info", headers=basic(USER, PASSWORD)).status_code == 200
        page = http.get("/", headers=basic(USER, PASSWORD))
        assert "chat-input" in page.text
        # Gradio's REST call API with curl-style Basic credentials.
        event = http.post("/gradio_api/call/generate", json={"data": list(GENERATE_ARGS)},
                          headers=basic(USER, PASSWORD))
        assert event.status_code == 200, event.text
        result = http.get(f"/gradio_api/call/generate/{event.json()['event_id']}", headers=basic(USER, PASSWORD))
        assert "event: complete" in result.text, result.text

    # gradio_client logs in through Gradio's login route and uses its session cookie.
    client = Client(guarded.url, auth=(USER, PASSWORD), verbose=False)
    assert isinstance(client.predict(*GENERATE_ARGS, api_name="/generate"), str)
    with pytest.raises(Exception, match="(?i)credentials|401|login|auth"):
        Client(guarded.url, auth=(USER, "wrong"), verbose=False)

    # The OpenAI SDK with the bearer key.
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{guarded.url}/v1", api_key=API_KEY)
    completion = sdk.chat.completions.create(model="base", **CHAT)
    assert completion.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(Exception, match="401"):
        OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.browser
def test_logging_in_through_the_browser(guarded):
    """The middleware lets through everything Gradio's login page needs, and nothing before login."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed")
    refused: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
        page.goto(guarded.url)
        page.wait_for_selector("input[type=password]")
        assert page.locator("#chat-input").count() == 0
        page.locator("input[type=text]").first.fill(USER)
        page.locator("input[type=password]").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        page.locator("input[type=text]").first.fill(USER)
        page.locator("input[type=password]").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        try:
            page.wait_for_selector("#chat-input textarea")
        finally:
            page.screenshot(path=str(ARTIFACTS / "auth-after-login.png"))
            browser.close()
    assert refused == [], f"the login page needed refused routes: {refused}"


def test_exposed_without_auth_refuses_changes_but_chats(tiny_model_dir, tmp_path):
    """Listening on 0.0.0.0 without --auth: training, deleting and pushing are off, chat works."""
    from llama_space.web.server import launch

    settings = Settings(model=str(tiny_model_dir), adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data",
                        host="0.0.0.0", port=free_port())
    assert settings.exposed and not settings.changes_allowed
    demo, _app = launch(settings, block=False)
    try:
        url = f"http://127.0.0.1:{settings.port}"
        client = Client(url, verbose=False)
        persona = Path(__file__).resolve().parent.parent / "examples" / "persona.jsonl"
        from gradio_client import handle_file

        refusals = [
            lambda: client.predict(handle_file(str(persona)), "pirate", "quick", *[None] * 11,
                                   api_name="/start_training"),
            lambda: client.predict("anything", api_name="/delete_adapter"),
            lambda: client.predict("20990101-000000-abcdef", api_name="/cancel_training"),
            lambda: client.predict("20990101-000000-abcdef", api_name="/resume_training"),
        ]
        for refused in refusals:
            with pytest.raises(AppError, match="reachable by anyone without a password"):
                refused()
        assert not (tmp_path / "data" / "jobs").exists() or not any((tmp_path / "data" / "jobs").iterdir())
        assert isinstance(client.predict(*GENERATE_ARGS, api_name="/generate"), str)
        assert client.predict(api_name="/list_adapters") == []
        # The UI says why.
        assert "LLAMA_SPACE_ALLOW_PUBLIC_CHANGES" in httpx.get(url + "/config", timeout=60).text
    finally:
        demo.close()


def test_exposed_changes_can_be_allowed_explicitly(tiny_model_dir, tmp_path):
    from llama_space.web.server import launch

    settings = load_settings([], environ={"LLAMA_SPACE_ALLOW_PUBLIC_CHANGES": "true", "GRADIO_SERVER_NAME": "0.0.0.0",
                                          "GRADIO_SERVER_PORT": str(free_port()), "MODEL_ID": str(tiny_model_dir),
                                          "LLAMA_SPACE_ADAPTERS_DIR": str(tmp_path / "adapters"),
                                          "LLAMA_SPACE_DATA_DIR": str(tmp_path / "data")})
    assert settings.exposed and settings.changes_allowed
    demo, _app = launch(settings, block=False)
    try:
        client = Client(f"http://127.0.0.1:{settings.port}", verbose=False)
        with pytest.raises(AppError, match="no adapter named 'anything'"):  # reached the action itself
            client.predict("anything", api_name="/delete_adapter")
    finally:
        demo.close()


# ---- Hugging Face OAuth rules (no Space here: the session is faked, the rules are real) ----------------------
class FakeRequest:
    """What gradio hands a queued function as gr.Request: the session dict OAuth stores its login in."""

    def __init__(self, userinfo: dict | None) -> None:
        self.session = {"oauth_info": {"userinfo": userinfo, "access_token": "t",
                                       "expires_at": time.time() + 600}} if userinfo else {}


@pytest.fixture
def on_oauth_space(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "owner/llama-space")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "owner")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")


def run_as(userinfo: dict | None) -> None:
    """A change asked for by a Gradio request signed in as `userinfo`, on an app exposed without a password."""
    from gradio.context import LocalContext

    exposed = Settings(host="0.0.0.0")
    token = LocalContext.request.set(FakeRequest(userinfo))
    try:
        Permissions(exposed, oauth.current_profile).require_change()
    finally:
        LocalContext.request.reset(token)


def test_oauth_changes_need_the_space_owner(on_oauth_space):
    assert oauth_enabled()
    with pytest.raises(UserError, match="Sign in with Hugging Face"):
        run_as(None)
    with pytest.raises(UserError, match="Only owner may"):
        run_as({"preferred_username": "someone-else"})
    run_as({"preferred_username": "owner"})
    run_as({"preferred_username": "member", "orgs": [{"preferred_username": "owner"}]})


def test_oauth_login_guards_the_change_actions(on_oauth_space, tmp_path):
    """On an OAuth Space without a password the controls are on, and each change checks the login."""
    from types import SimpleNamespace

    from gradio.context import LocalContext

    from llama_space.service.actions import Actions

    settings = Settings(adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data")
    assert settings.exposed and not settings.changes_allowed  # a Space, no --auth
    backend = SimpleNamespace(settings=settings, unload_adapter=lambda name: None)
    actions = Actions(backend, runner=None, permissions=Permissions(settings, oauth.current_profile))
    assert actions.permissions.controls_on
    for userinfo, error in [(None, "Sign in with Hugging Face"), ({"preferred_username": "x"}, "Only owner"),
                            ({"preferred_username": "owner"}, "no adapter named 'gone'")]:
        token = LocalContext.request.set(FakeRequest(userinfo))
        try:
            with pytest.raises(UserError, match=error):
                actions.delete_adapter("gone")
        finally:
            LocalContext.request.reset(token)


def test_oauth_rules_are_off_elsewhere(monkeypatch):
    for name in ("SPACE_ID", "OAUTH_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not oauth_enabled()
    with pytest.raises(UserError, match="reachable by anyone without a password"):
        run_as(None)  # no Space, no OAuth: the password/exposure rules alone decide
    Permissions(Settings()).require_change()  # loopback: allowed


def test_janitor_removes_finished_scratch_only(tmp_path):
    from llama_space.jobs import files as jobfiles

    settings = Settings(adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data")
    jobs = tmp_path / "data" / "jobs"
    for job_id, state in [("20990101-000000-aaaaaa", "completed"), ("20990101-000000-bbbbbb", "running"),
                          ("20990101-000000-cccccc", "interrupted")]:
        job = jobs / job_id
        (job / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (job / "dataset.jsonl").write_text("{}\n")
        jobfiles.write_json_atomic(job / "job.json", {"dataset": "dataset.jsonl"})
        jobfiles.write_json_atomic(job / "status.json", {"state": state})
    evil = jobs / "20990101-000000-dddddd"
    evil.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    jobfiles.write_json_atomic(evil / "job.json", {"dataset": str(outside)})
    jobfiles.write_json_atomic(evil / "status.json", {"state": "completed"})
    adapters = tmp_path / "adapters"
    (adapters / ".tmp-pirate-999999999").mkdir(parents=True)  # a staging dir of a process that is gone
    (adapters / f".tmp-pirate-{os.getpid()}").mkdir()  # one being written right now
    uploads = tmp_path / "uploads"
    (uploads / "old").mkdir(parents=True)
    (uploads / "new").mkdir()
    os.utime(uploads / "old", (time.time() - 2 * 86400,) * 2)

    removed = Janitor(settings, uploads).sweep()

    assert removed["job_scratch"] == 2 and removed["staging"] == 1 and removed["uploads"] == 1
    assert not (jobs / "20990101-000000-aaaaaa" / "checkpoints").exists()
    assert not (jobs / "20990101-000000-aaaaaa" / "dataset.jsonl").exists()
    assert (jobs / "20990101-000000-aaaaaa" / "status.json").exists()
    for unfinished in ("20990101-000000-bbbbbb", "20990101-000000-cccccc"):  # still needed to run or resume
        assert (jobs / unfinished / "checkpoints" / "checkpoint-2").is_dir()
        assert (jobs / unfinished / "dataset.jsonl").is_file()
    assert outside.read_text() == "keep me"
    assert (adapters / f".tmp-pirate-{os.getpid()}").is_dir() and (uploads / "new").is_dir()

