"""Training jobs are private (issue 19, F5): on an app anyone can reach without a password, no anonymous client
learns a job's id, log or held-out rows; the owner on loopback still gets them; logs never show server paths.

Two apps serve the same data dir, which holds one interrupted job (its held-out rows are its private training
data; its log and error name server paths) and an adapter whose metadata names the job: one app listens on
0.0.0.0 without auth, the other on loopback. Every surface a visitor can reach is asked: the named endpoints,
the Compare tab's job lists (in /config and on selecting the tab), the page-load job poll and /list_adapters.
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space import adapters
from llama_space.jobs import files as jobfiles
from llama_space.settings import Settings
from llama_space.training.params import TrainingParams
from llama_space.training.registry import JobRegistry

from adapterutil import random_adapter
from apputil import free_port, launched_app
from conftest import REPO
from jobutil import write_alpaca

PRIVATE = "shown only to those who may train here"
ABSOLUTE = re.compile(r"(?<![\w.:/<>-])/(tmp|work|root|home|usr|proc|etc)/")


@pytest.fixture(scope="module")
def root(tiny_model_dir, tmp_path_factory):
    """The data dir with the job (its id in root/"job_id") and the adapter it trained."""
    root = tmp_path_factory.mktemp("hostile-jobs")
    settings = Settings(model=str(tiny_model_dir), data_dir=root / "data", adapters_dir=root / "adapters")
    registry = JobRegistry(settings)
    job_id = registry.create(write_alpaca(root / "sums.jsonl"), "sums", TrainingParams(eval_fraction=0.25))
    job_dir = registry.job_dir(job_id)
    (job_dir / jobfiles.LOG_FILE).write_text(
        f"INFO reading {job_dir.resolve()}/dataset.jsonl\nTraceback (most recent call last):\n"
        f'  File "{REPO}/llama_space/training/train.py", line 240, in run\n'
        f"OSError: [Errno 28] No space left on device: '{(root / 'adapters').resolve()}/.tmp-sums-1'\n")
    jobfiles.update_status(job_dir, state="interrupted", error=f"Stopped; the checkpoint is in {job_dir.resolve()}.")
    random_adapter(tiny_model_dir, root / "adapters" / "sums", seed=1)
    adapters.write_metadata(root / "adapters" / "sums", {
        "base_model": str(tiny_model_dir), "job_id": job_id,
        "evaluation": {"source": f"held-out split of job {job_id}", "loss": 1.5}})
    (root / "job_id").write_text(job_id)
    return root


@pytest.fixture(scope="module")
def job_id(root) -> str:
    return (root / "job_id").read_text()


@pytest.fixture(scope="module")
def exposed(root, tiny_model_dir):
    """(client, http) of the app listening on 0.0.0.0 without auth, reached as an anonymous visitor."""
    from llama_space.web.server import launch

    settings = Settings(model=str(tiny_model_dir), data_dir=root / "data", adapters_dir=root / "adapters",
                        host="0.0.0.0", port=free_port())
    assert settings.exposed and not settings.changes_allowed
    demo, _app = launch(settings, block=False)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            yield Client(url, verbose=False), http
    finally:
        demo.close()


@pytest.fixture(scope="module")
def owner(root, tiny_model_dir):
    """(client, http) of the same data served on loopback, where its user may see and change everything."""
    settings = Settings(model=str(tiny_model_dir), data_dir=root / "data", adapters_dir=root / "adapters")
    with launched_app(settings) as app, httpx.Client(base_url=app.url, timeout=120) as http:
        yield Client(app.url, verbose=False), http


def dependency(config: dict, trigger: str, output_elem_id: str) -> int:
    """The fn_index of the UI event fired by `trigger` that updates the component `output_elem_id`."""
    output = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == output_elem_id)
    return next(d["id"] for d in config["dependencies"]
                if output in d["outputs"] and any(t[1] == trigger for t in d["targets"]))


def ui_event(http: httpx.Client, trigger: str, output_elem_id: str, data: list) -> str:
    """Fire a hidden UI event as the page does (these run outside the queue); the reply's text."""
    fn_index = dependency(http.get("/config").json(), trigger, output_elem_id)
    reply = http.post("/gradio_api/run/predict", json={"data": data, "fn_index": fn_index,
                                                       "session_hash": uuid.uuid4().hex})
    assert reply.status_code == 200, reply.text[:300]
    return reply.text


def job_dropdowns(config_text: str) -> list[dict]:
    config = json.loads(config_text)
    return [c["props"] for c in config["components"]
            if c.get("props", {}).get("elem_id") in ("compare-job", "evaluate-job")]


def test_anonymous_visitors_get_no_job_data(exposed, job_id):
    client, _http = exposed
    for api, args in (("/job_status", (job_id,)), ("/compare_file", (None, [], job_id))):
        with pytest.raises(AppError, match=PRIVATE) as refused:
            client.predict(*args, api_name=api)
        assert "plus" not in str(refused.value)  # no held-out row
    for api, kwargs in (("/evaluate", {"adapters": ["sums"], "job_id": job_id}),
                        ("/start_evaluation", {"adapters": ["sums"], "job_id": job_id}),
                        ("/evaluation_status", {})):
        with pytest.raises(AppError) as refused:
            client.predict(**kwargs, api_name=api)
        assert "reachable by anyone without a password" in str(refused.value), api


def test_anonymous_visitors_see_no_job_ids(exposed, job_id):
    client, http = exposed
    config = http.get("/config").text
    assert job_id not in config
    for props in job_dropdowns(config):
        assert props["choices"] == [] and PRIVATE in props["info"], props
    selected = ui_event(http, "select", "compare-job", [])
    assert job_id not in selected and PRIVATE in selected
    poll = ui_event(http, "load", "job-progress", [""])
    assert job_id not in poll and PRIVATE in poll and "No space left" not in poll
    listed = client.predict(api_name="/list_adapters")
    assert [a["name"] for a in listed] == ["sums"] and job_id not in json.dumps(listed)
    assert listed[0]["evaluation"]["loss"] == 1.5


def test_the_owner_on_loopback_sees_the_job_without_server_paths(owner, job_id, root):
    client, http = owner
    status = client.predict(job_id, api_name="/job_status")
    assert status["state"] == "interrupted"
    assert status["error"] == f"Stopped; the checkpoint is in <data>/jobs/{job_id}."
    table, _csv, _jsonl = client.predict(None, [], job_id, "", 2, api_name="/compare_file")
    assert table["source"] == f"held-out split of job {job_id}" and len(table["rows"]) == 6
    assert all("plus" in row[0] for row in table["rows"])
    for props in job_dropdowns(http.get("/config").text):
        assert job_id in [value for _label, value in props["choices"]]
    # The poll's outputs begin with the job id (a State, which the server keeps), the progress HTML, the loss plot
    # and the log; the buttons and the form's lock follow.
    _state, progress, _plot, log = json.loads(ui_event(http, "load", "job-progress", [""]))["data"][:4]
    log = log["value"] if isinstance(log, dict) else log
    assert f"Job {job_id}" in progress
    # The log view keeps the app's own lines and the error, not the traceback's file lines (the job folder's
    # train.log has them, with the same paths hidden).
    assert f"<data>/jobs/{job_id}/dataset.jsonl" in log and 'File "' not in log, log
    assert "<adapters>/.tmp-sums-1" in log
    for text in (log, progress, json.dumps(status)):
        assert str(root) not in text and not ABSOLUTE.search(text), text
    listed = client.predict(api_name="/list_adapters")
    assert listed[0]["job_id"] == job_id and job_id in listed[0]["evaluation"]["source"]


def test_hidden_paths_leave_urls_fractions_and_relative_paths_alone():
    from llama_space.jobs.privacy import hide_paths

    places = [("/srv/app/data", "<data>")]
    text = ("step 5/10: read /srv/app/data/jobs/x/train.log, /srv/app/data2/y and '/etc/passwd'; "
            "see https://hf.co/a/b and data/x")
    assert hide_paths(text, places) == ("step 5/10: read <data>/jobs/x/train.log, …/y and '…/passwd'; "
                                        "see https://hf.co/a/b and data/x")
