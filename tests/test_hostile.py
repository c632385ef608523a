"""Hostile input: every case gets a clear error, the app keeps serving, nothing outside the data dir is touched.

One app (tiny model, 1 MB upload limit) takes the whole suite through every client: gradio_client, raw Gradio
HTTP routes, POST / and /v1. The last test checks the app still answers and records the figures.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from llama_space.settings import Settings

from apputil import launched_app
from conftest import REPO

PERSONA = REPO / "examples" / "persona.jsonl"
ARTIFACTS = REPO / "test-artifacts"
SECRET = "canary-7f3a: nobody may read this"
# Adapter and job names that try to leave their directory: traversal, absolute paths, NUL, look-alikes.
HOSTILE_NAMES = [
    "../evil", "..", "../../outside/canary", "/etc/passwd", "/tmp", "a/b", "a\\b", "..\\..\\evil", "evil\x00",
    "nul\x00/../x", "．．／evil", "／etc／passwd", "‥／evil", "‥", "pirate\n", " pirate", "~root",
    "%2e%2e%2fevil", "a" * 65, "ｅｖｉｌ", ".hidden", "-rf", "base/../..",
]
HOSTILE_JOB_IDS = HOSTILE_NAMES + ["20990101-000000-abcdef\n", "٢٠٩٩٠١٠١-٠٠٠٠٠٠-abcdef",
                                   "20990101-000000-abcdef/../../x"]
NAME_ERROR = r"Invalid adapter name|Unknown adapter|no adapter named|Choose an adapter"
FIGURES: Counter = Counter()  # cases tried per kind, written to test-artifacts/hostile-figures.json
TIMINGS: dict[str, float] = {}  # seconds per 100k-character prompt refusal


def snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, float]]:
    """Every file under `root` (except the `skip` top-level dirs) with its size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


class EvilPickle:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """The running app, its clients, and a canary file beside its data dir."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "outside").mkdir()
    (root / "outside" / "canary").write_text(SECRET)
    (root / "adapters").mkdir()
    pickled = root / "adapters" / "evil-pickle"  # a pickle-only "adapter" dropped in by hand
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(EvilPickle(root / "outside" / "pickle-ran")))
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": [
        "q_proj"], "base_model_name_or_path": str(tiny_model_dir)}))
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
                        max_upload_mb=1)
    before = snapshot(root, ("data", "adapters"))
    with launched_app(settings) as app, httpx.Client(base_url=app.url, timeout=120) as http:
        yield {"app": app, "root": root, "http": http, "client": Client(app.url, verbose=False)}
    assert snapshot(root, ("data", "adapters")) == before, "something outside the data dir was written"
    assert not (root / "outside" / "pickle-ran").exists()


def refused(response: httpx.Response, *statuses: int) -> str:
    """The error text of a refused request; fails on success, a server error, or a leaked secret."""
    assert response.status_code in (statuses or (400, 404)), (response.status_code, response.text[:300])
    assert SECRET not in response.text and "root:x:0" not in response.text
    return response.text


def gradio_call(http: httpx.Client, api: str, data: list) -> str:
    """Call a named endpoint over Gradio's raw HTTP API; returns the event stream text."""
    event = http.post(f"/gradio_api/call/{api}", json={"data": data})
    if event.status_code != 200:
        return event.text
    return http.get(f"/gradio_api/call/{api}/{event.json()['event_id']}").text


def test_traversal_names_are_refused_on_every_route(world):
    client, http = world["client"], world["http"]
    persona = handle_file(str(PERSONA))
    for name in HOSTILE_NAMES:
        with pytest.raises(AppError, match=NAME_ERROR):
            client.predict("Hello", "", name, 4, 0.0, 1.0, api_name="/generate")
        with pytest.raises(AppError, match="Invalid adapter name"):
            client.predict(persona, name, "quick", *[None] * 11, api_name="/start_training")
        with pytest.raises(AppError, match=NAME_ERROR):
            client.predict(name, api_name="/delete_adapter")
        assert "model_not_found" in refused(http.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": "Hello"}]}), 404)
        assert "Unknown adapter" in refused(http.post("/", json={"prompt": "Hello", "adapter": name}), 404)
        FIGURES["traversal name x route"] += 5
    for job_id in HOSTILE_JOB_IDS:
        for api in ("/job_status", "/cancel_training", "/resume_training"):
            with pytest.raises(AppError, match="There is no training job"):
                client.predict(job_id, api_name=api)
            FIGURES["traversal name x route"] += 1
    assert not (world["root"] / "data" / "jobs").exists() or not any((world["root"] / "data" / "jobs").iterdir())


def test_file_routes_serve_nothing_outside_their_dirs(world):
    http, root, app = world["http"], world["root"], world["app"]
    canary = root / "outside" / "canary"
    probes = [
        "/gradio_api/file=/etc/passwd", "/gradio_api/file=%2Fetc%2Fpasswd", "/gradio_api/file=../../../../etc/passwd",
        "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/gradio_api/file/etc/passwd",
        "/gradio_api/file=/proc/self/environ", f"/gradio_api/file={canary}", f"/gradio_api/file={root}/data/../outside/canary",
        f"/gradio_api/file={root / 'adapters' / 'evil-pickle' / 'adapter_model.bin'}",
        f"/gradio_api/file={app.settings.model}/config.json", "/gradio_api/file=README.md", "/gradio_api/file=.git/config",
        f"/gradio_api/file=file://{canary}", f"/gradio_api/file=http://127.0.0.1:{app.settings.port}/config",
        "/gradio_api/proxy=http://127.0.0.1:1/anything", "/file=/etc/passwd", "/static/../../../../etc/passwd",
        "/assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/svelte/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    ]
    for probe in probes:
        refused(http.get(probe), 400, 403, 404)
        FIGURES["file route probe"] += 1
    # File arguments must be uploads: a path to any other file is refused before our code sees it.
    # Gradio's raw protocol fills in no defaults: every parameter is sent, the ones after the file as None.
    endpoints = world["client"].view_api(print_info=False, return_format="dict")["named_endpoints"]
    for path in ("/etc/passwd", str(canary), str(root / "data"), str(PERSONA)):
        for api, given in (("validate_dataset", [{"path": path, "meta": {"_type": "gradio.FileData"}}]),
                           ("start_training", [{"path": path, "meta": {"_type": "gradio.FileData"}}, "x", "quick"])):
            data = given + [None] * (len(endpoints[f"/{api}"]["parameters"]) - len(given))
            text = gradio_call(http, api, data)
            assert "event: error" in text and "not uploaded by a user" in text, text[:300]
            assert SECRET not in text and "root:x:0" not in text
            FIGURES["file argument injection"] += 1


def test_uploads_are_bounded_and_kept_in_the_upload_dir(world, tmp_path):
    http, client, app = world["http"], world["client"], world["app"]
    upload_dir = Path(app.app.uploaded_file_dir).resolve()
    names = ["../../../outside/evil.json", "/etc/cron.d/evil.json", "..\\..\\evil.json", "evil\x00.json", "．．／x.json"]
    for name in names:
        saved = http.post("/gradio_api/upload", files=[("files", (name, b"[]"))])
        assert saved.status_code == 200, saved.text
        assert Path(saved.json()[0]).resolve().is_relative_to(upload_dir), saved.json()
        FIGURES["upload file name"] += 1
    big = tmp_path / "big.jsonl"
    line = json.dumps({"instruction": "Say hi", "output": "Hi"}) + "\n"
    big.write_text(line * (2**20 // len(line) + 10))  # just over the 1 MB limit
    text = refused(http.post("/gradio_api/upload", files=[("files", ("big.jsonl", big.read_bytes()))]), 413)
    assert "maximum allowed size" in text
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(handle_file(str(big)), api_name="/validate_dataset")
    FIGURES["oversize upload"] += 2


def test_deeply_nested_json_is_refused(world, tmp_path):
    http, client = world["http"], world["client"]
    deep = "[" * 100_000 + "]" * 100_000
    headers = {"content-type": "application/json"}
    assert "nested too deeply" in refused(http.post("/", content=deep, headers=headers), 400)
    assert "nested too deeply" in refused(http.post("/v1/chat/completions", content=deep, headers=headers), 400)
    refused(http.post("/gradio_api/call/generate", content='{"data": ' + deep + "}", headers=headers), 400, 422)
    content = json.loads("[" * 500 + "]" * 500)
    refused(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]}), 400)
    nested = tmp_path / "nested.json"
    nested.write_text(deep)
    with pytest.raises(AppError, match="nested too deeply"):
        client.predict(handle_file(str(nested)), api_name="/validate_dataset")
    FIGURES["deeply nested JSON"] += 5


BAD_FILES = {
    "latin1.json": ('[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"), "not UTF-8"),
    "binary.json": (bytes(range(256)) * 16, "binary"),
    "image.json": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64, "binary"),
    "utf16.json": ('[{"instruction": "a", "output": "b"}]'.encode("utf-16"), "UTF-16"),
    "noise.jsonl": (bytes(range(128, 256)) * 8, "not UTF-8"),
    "empty.json": (b"", "empty"),
    "text.parquet": (b"instruction,output\nhi,there\n", "could not be read as PARQUET"),
    "scalar.json": (b"42", "not an object|not a list|single JSON"),
    "program.exe": (b"MZ\x90\x00", "(?i)unsupported file type|invalid file type"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_broken_files_get_clear_errors(world, tmp_path, name):
    data, error = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError, match=error):
        world["client"].predict(handle_file(str(path)), api_name="/validate_dataset")
    FIGURES["broken data file"] += 1


def test_csv_formula_cells_are_warned_about(world, tmp_path):
    path = tmp_path / "formulas.csv"
    path.write_text('instruction,output\n=HYPERLINK("http://evil"),fine\nplain,+1+2\n@SUM(A1),-3\nok,ok\n')
    report = world["client"].predict(handle_file(str(path)), api_name="/validate_dataset")
    flagged = sorted(w["row"] for w in report["warnings"] if "formula" in w["message"])
    assert report["ok"] and flagged == [1, 2, 3], report["warnings"]
    FIGURES["CSV formula cells"] += 3


EXTREME_REST = [("temperature", "NaN"), ("temperature", "Infinity"), ("temperature", "-Infinity"),
                ("temperature", "1e308"), ("temperature", "-1"), ("top_p", "NaN"), ("top_p", "2"), ("top_p", "0"),
                ("top_p", "-0.1"), ("max_new_tokens", "1000000000000"), ("max_new_tokens", "-1"),
                ("max_new_tokens", "0"), ("max_new_tokens", "1e308"), ("max_new_tokens", '"100"')]
EXTREME_OPENAI = [("temperature", "NaN"), ("temperature", "1e308"), ("top_p", "Infinity"), ("top_p", "-1"),
                  ("max_tokens", "1000000000000"), ("max_tokens", "-5"), ("seed", str(2**70)), ("seed", "1.5"),
                  ("n", "1000"), ("stop", '["", ""]'), ("max_completion_tokens", "1e308")]
# (max_new_tokens, temperature, top_p) as JSON text: gradio_client itself refuses to send NaN or Infinity.
EXTREME_GRADIO = [("Infinity", "0.7", "0.9"), ("1e308", "0.7", "0.9"), ("-1", "0.7", "0.9"),
                  ("1000000000000", "0.7", "0.9"), ("16", "NaN", "0.9"), ("16", "Infinity", "0.9"),
                  ("16", "-0.5", "0.9"), ("16", "1e308", "0.9"), ("16", "0.7", "NaN"), ("16", "0.7", "0"),
                  ("16", "0.7", "-1e308")]


def test_extreme_sampling_values_are_refused(world):
    http = world["http"]
    headers = {"content-type": "application/json"}
    for field, value in EXTREME_REST:
        body = f'{{"prompt": "Hello", "{field}": {value}}}'
        assert field in refused(http.post("/", content=body, headers=headers), 400)
    for field, value in EXTREME_OPENAI:
        body = f'{{"messages": [{{"role": "user", "content": "Hello"}}], "{field}": {value}}}'
        assert field in refused(http.post("/v1/chat/completions", content=body, headers=headers), 400)
    for max_new, temperature, top_p in EXTREME_GRADIO:
        body = f'{{"data": ["Hello", "", "", {max_new}, {temperature}, {top_p}, 50, 1.0]}}'
        event = http.post("/gradio_api/call/generate", content=body, headers=headers)
        if event.status_code == 200:
            text = http.get(f"/gradio_api/call/generate/{event.json()['event_id']}").text
            assert "event: error" in text and re.search("max_new_tokens|temperature|top_p", text), (body, text)
        else:
            refused(event, 400, 422)
    FIGURES["extreme sampling value"] += len(EXTREME_REST) + len(EXTREME_OPENAI) + len(EXTREME_GRADIO)


def test_huge_prompts_fail_fast_and_clearly(world):
    http, client = world["http"], world["client"]
    prompt = "x " * 50_000  # 100k characters
    timings = {}
    started = time.monotonic()
    assert "too long" in refused(http.post("/", json={"prompt": prompt, "max_new_tokens": 16}), 400)
    timings["POST /"] = time.monotonic() - started
    started = time.monotonic()
    assert "too long" in refused(http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}), 400)
    timings["/v1"] = time.monotonic() - started
    for api, args in (("/generate", (prompt, "", "", 16, 0.0, 1.0)), ("/chat", (prompt, [], "", "", 16, 0.0, 1.0))):
        started = time.monotonic()
        with pytest.raises(AppError, match="too long"):
            client.predict(*args, api_name=api)
        timings[api] = time.monotonic() - started
    assert max(timings.values()) < 20, timings  # tokenizing 100k characters, not generating
    TIMINGS.update({api: round(seconds, 3) for api, seconds in timings.items()})
    FIGURES["100k-character prompt"] += len(timings)


def test_two_training_starts_at_once_start_one_job(world):
    app = world["app"]
    values = [None, None, 500, None, None, 64, None, None, None, None, None]  # long enough to still be running
    clients = [Client(app.url, verbose=False) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(c.predict, handle_file(str(PERSONA)), f"twin-{i}", "quick", *values,
                               api_name="/start_training") for i, c in enumerate(clients)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=300))
            except AppError as exc:
                outcomes.append(exc)
    started = [o for o in outcomes if isinstance(o, dict)]
    refusals = [o for o in outcomes if isinstance(o, AppError)]
    assert len(started) == 1 and len(refusals) == 1, outcomes
    assert "already running" in str(refusals[0])
    job_id = started[0]["job_id"]
    world["client"].predict(job_id, api_name="/cancel_training")
    deadline = time.monotonic() + 300
    while (state := world["client"].predict(job_id, api_name="/job_status")["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline, "the cancelled job did not stop"
        time.sleep(1)
    assert state == "cancelled"
    FIGURES["concurrent training start"] += 2


def test_pickle_only_adapter_is_never_listed_or_loaded(world):
    http, client, root = world["http"], world["client"], world["root"]
    assert "evil-pickle" not in [a["name"] for a in client.predict(api_name="/list_adapters")]
    assert "evil-pickle" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    with pytest.raises(AppError, match="Unknown adapter 'evil-pickle'"):
        client.predict("Hello", "", "evil-pickle", 4, 0.0, 1.0, api_name="/generate")
    refused(http.post("/", json={"prompt": "Hello", "adapter": "evil-pickle"}), 404)
    refused(http.post("/v1/chat/completions", json={"model": "evil-pickle", "messages": [
        {"role": "user", "content": "Hello"}]}), 404)
    with pytest.raises(AppError, match="no adapter named 'evil-pickle'"):
        client.predict("evil-pickle", api_name="/delete_adapter")
    assert (root / "adapters" / "evil-pickle" / "adapter_model.bin").is_file()
    assert not (root / "outside" / "pickle-ran").exists()
    FIGURES["pickle-only adapter"] += 5


def test_remote_code_in_a_model_dir_never_runs(tiny_model_dir, tmp_path):
    """A model whose config points at its own Python code is loaded as plain Llama (or refused), never run."""
    from llama_space.model.loading import load_model
    from llama_space.training import lora

    model_dir = tmp_path / "remote-code-model"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "remote-code-ran"
    (model_dir / "evil_model.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                             "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config))
    for load in (lambda: load_model(str(model_dir), "cpu", "float32", tmp_path / "cache"),
                 lambda: lora.load_base(str(model_dir), tmp_path / "cache")):
        try:
            model = load()[0]
            assert type(model).__name__ == "LlamaForCausalLM"
        except Exception as exc:  # noqa: BLE001 - refusing is as good as ignoring the code
            assert "trust_remote_code" in str(exc), exc
        assert not marker.exists(), "remote code ran"
    FIGURES["remote-code model"] += 2


def test_the_app_still_serves_normally(world):
    http, client = world["http"], world["client"]
    assert isinstance(client.predict("Hello", "", "", 8, 0.0, 1.0, api_name="/generate"), str)
    reply = http.post("/", json={"prompt": "Hello", "max_new_tokens": 8, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["status"] == 200
    completion = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello"}],
                                                         "max_tokens": 8})
    assert completion.status_code == 200, completion.text
    assert world["app"].backend.admission.in_flight == 0
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "hostile-figures.json").write_text(json.dumps(
        {"cases": dict(FIGURES), "total": sum(FIGURES.values()), "too_long_seconds": TIMINGS}, indent=1))
