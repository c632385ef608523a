"""Exports as jobs through the launched app's API by keyword: merge, poll, download; cancel; refusals; sweeping."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space.export import export_jobs, gguf_base, merge
from llama_space.jobs import files as jobfiles
from llama_space.service.export_actions import ExportActions
from llama_space.service.permissions import Permissions
from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import launched_app
from jobutil import poll

ENDPOINTS = {"/export_adapter": ["adapter", "kind", "quantization"], "/export_status": ["export_id"],
             "/cancel_export": ["export_id"], "/push_to_hub": ["source", "repo_id", "private"],
             "/list_exports": [], "/download_export": ["export_id", "file"]}


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-app")
    random_adapter(tiny_model_dir, root / "adapters" / "pirate", seed=4, targets=("q_proj", "v_proj", "down_proj"))
    random_adapter(tiny_model_dir, root / "adapters" / "parrot", seed=5, targets=("k_proj", "o_proj"))
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data")
    with launched_app(settings) as launched:
        yield launched


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def ended(client, export_id: str, timeout: float = 90) -> dict:
    def check():
        status = client.predict(export_id=export_id, api_name="/export_status")
        return status if status["state"] not in jobfiles.ACTIVE_STATES else None
    return poll(f"export {export_id} to end", check, timeout=timeout, interval=0.3)


def test_endpoints_have_named_typed_parameters_with_defaults(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for api_name, names in ENDPOINTS.items():
        params = endpoints[api_name]["parameters"]
        assert [p["parameter_name"] for p in params] == names, api_name
        assert all(p["python_type"]["type"] not in ("", "Any") for p in params), api_name
    defaults = {p["parameter_name"]: p["parameter_default"] for p in endpoints["/export_adapter"]["parameters"]
                if p["parameter_has_default"]}
    assert defaults == {"kind": "merge", "quantization": "q8_0"}
    download = endpoints["/download_export"]["parameters"][1]
    assert download["parameter_has_default"] and download["parameter_default"] == ""
    assert [p["parameter_default"] for p in endpoints["/push_to_hub"]["parameters"]][2] is True


def test_merge_job_completes_and_downloads_a_loadable_model(app, client, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    started = client.predict(adapter="pirate", api_name="/export_adapter")
    assert started["state"] == "queued" and started["kind"] == "merge" and "of memory" in started["needs"]
    status = ended(client, started["export_id"])
    assert status["state"] == "completed", status
    assert status["progress"] == 1.0 and status["files"] == ["pirate-merged.zip", "pirate-merged/"]
    assert client.predict(api_name="/list_exports")[0]["export_id"] == started["export_id"]
    downloaded = Path(client.predict(export_id=started["export_id"], api_name="/download_export"))
    with zipfile.ZipFile(downloaded) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path)
    assert set(names) == {f"pirate-merged/{n}" for n in ("config.json", "generation_config.json", "tokenizer.json",
                                                         "tokenizer_config.json", "chat_template.jinja",
                                                         merge.INDEX_FILE, merge.PROVENANCE_FILE,
                                                         "model-00001-of-00001.safetensors")}
    ids = torch.randint(0, 1000, (1, 16))
    adapter = Path(app.settings.adapters_dir) / "pirate"
    with torch.inference_mode():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "pirate-merged")(ids).logits
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)(ids).logits
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=1e-4)
    _push_records_the_merged_folder(app, started["export_id"])


def _push_records_the_merged_folder(app, export_id: str) -> None:
    """Pushing the export by its id sends the merged folder (the same files the zip holds) and a card."""
    sent = []
    recorder = type("Api", (), {"create_repo": lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}",
                                "create_commit": lambda self, repo_id, ops, **kw: sent.extend(ops)})()
    actions = ExportActions(app.settings, Permissions(app.settings), hub_api=recorder)
    assert actions.push(export_id, "me/pirate-merged")["url"] == "https://huggingface.co/me/pirate-merged"
    folder = Path(app.settings.data_dir) / "exports" / export_id / "out" / "pirate-merged"
    assert sorted(op.path_in_repo for op in sent) == sorted([p.name for p in folder.iterdir()] + ["README.md"])


def test_gguf_job_writes_the_file_and_a_modelfile(client):
    started = client.predict(adapter="pirate", kind="gguf", quantization="q8_0", api_name="/export_adapter")
    assert started["quantization"] == "q8_0"
    status = ended(client, started["export_id"])
    assert status["state"] == "completed", status
    assert status["files"] == ["Modelfile", "README.md", "pirate-q8_0.gguf"]
    downloaded = Path(client.predict(export_id=started["export_id"], api_name="/download_export"))
    assert downloaded.name == "pirate-q8_0.gguf" and downloaded.read_bytes()[:4] == b"GGUF"


def test_adapter_gguf_jobs_share_one_base_file(app, client, tiny_model_dir):
    settings = app.settings
    cached = gguf_base.cached_path(settings.cache_dir, settings.model, tiny_model_dir, "q8_0")
    stats = []
    for adapter, note in (("pirate", "written once, then reused"), ("parrot", "cached already")):
        started = client.predict(adapter=adapter, kind="gguf_adapter", quantization="q8_0",
                                 api_name="/export_adapter")
        assert started["kind"] == "gguf_adapter" and note in started["needs"], started
        status = ended(client, started["export_id"])
        assert status["state"] == "completed", status
        assert status["files"] == sorted(["Modelfile", "README.md", cached.name, f"{adapter}-lora-f16.gguf"])
        stats.append((cached.stat().st_ino, cached.stat().st_mtime_ns))
        downloaded = Path(client.predict(export_id=started["export_id"], api_name="/download_export"))
        assert downloaded.name == f"{adapter}-lora-f16.gguf" and downloaded.read_bytes()[:4] == b"GGUF"
        base = Path(client.predict(export_id=started["export_id"], file=cached.name, api_name="/download_export"))
        assert base.read_bytes() == cached.read_bytes()
        modelfile = Path(client.predict(export_id=started["export_id"], file="Modelfile", api_name="/download_export"))
        assert modelfile.read_text().startswith(f"FROM ./{cached.name}\nADAPTER ./{adapter}-lora-f16.gguf\n")
    assert stats[0] == stats[1]  # the second export reused the first one's base file
    with pytest.raises(AppError, match="has no file 'job.json'"):
        client.predict(export_id=started["export_id"], file="job.json", api_name="/download_export")
    with pytest.raises(AppError, match="push the adapter itself"):
        client.predict(source=started["export_id"], repo_id="me/parrot", api_name="/push_to_hub")


def test_cancel_stops_the_export_and_removes_its_files(app, client):
    started = client.predict(adapter="pirate", kind="merge", api_name="/export_adapter")
    with pytest.raises(AppError, match="already running"):
        client.predict(adapter="pirate", api_name="/export_adapter")
    client.predict(export_id=started["export_id"], api_name="/cancel_export")
    status = ended(client, started["export_id"])
    assert status["state"] == "cancelled" and status["files"] == [] and status["download"] is None
    out = Path(app.settings.data_dir) / "exports" / started["export_id"]
    assert not (out / export_jobs.OUT_DIR).exists() and not (out / export_jobs.SCRATCH_DIR).exists()
    with pytest.raises(AppError, match="only a completed export can be downloaded"):
        client.predict(export_id=started["export_id"], api_name="/download_export")
    with pytest.raises(AppError, match="already cancelled"):
        client.predict(export_id=started["export_id"], api_name="/cancel_export")


def test_bad_requests_say_what_to_fix(client):
    for kwargs, message in (({"adapter": "nobody"}, "no adapter named 'nobody'"),
                            ({"adapter": ""}, "Choose an adapter"),
                            ({"adapter": "pirate", "kind": "onnx"}, "Unknown export kind"),
                            ({"adapter": "pirate", "kind": "gguf", "quantization": "q3_k"}, "Unknown GGUF"),
                            ({"adapter": "pirate", "kind": "gguf_adapter", "quantization": "q3_k"}, "Unknown GGUF")):
        with pytest.raises(AppError, match=message):
            client.predict(**kwargs, api_name="/export_adapter")
    with pytest.raises(AppError, match="There is no export '../etc'"):
        client.predict(export_id="../etc", api_name="/export_status")


def test_refused_when_exposed_without_auth(client, monkeypatch):
    exports = client.predict(api_name="/list_exports")
    monkeypatch.setenv("SPACE_ID", "someone/llama-space")  # now reachable by anyone, with no password
    for api_name, kwargs in (("/export_adapter", {"adapter": "pirate"}),
                             ("/download_export", {"export_id": exports[-1]["export_id"]}),
                             ("/cancel_export", {"export_id": exports[0]["export_id"]}),
                             ("/push_to_hub", {"source": "pirate", "repo_id": "me/pirate"})):
        with pytest.raises(AppError, match="reachable by anyone without a password"):
            client.predict(**kwargs, api_name=api_name)
    assert client.predict(export_id=exports[0]["export_id"], api_name="/export_status")["state"] == "cancelled"


def test_dead_process_reads_interrupted_and_the_sweep_removes_old_exports(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    root = export_jobs.exports_root(settings.data_dir)
    now = time.time()
    states = {"20990101-000000-000000000000000a": ("completed", now - 2 * export_jobs.KEEP_SECONDS),
              "20990101-000000-000000000000000b": ("completed", now),
              "20990101-000000-000000000000000c": ("running", None)}
    for export_id, (state, finished) in states.items():
        (root / export_id / export_jobs.OUT_DIR).mkdir(parents=True)
        jobfiles.write_json_atomic(root / export_id / jobfiles.JOB_FILE, {"export_id": export_id})
        jobfiles.write_json_atomic(root / export_id / jobfiles.STATUS_FILE, {
            "state": state, "finished": finished, "pid": 999999999, "created": now})
    (root / ".new-20990101-000000-000000000000000d-999999999").mkdir()
    assert export_jobs.sweep_exports(settings.data_dir) == 2
    assert sorted(p.name for p in root.iterdir()) == sorted(list(states)[1:])
    status = export_jobs.ExportJobs(settings).status("20990101-000000-000000000000000c")
    assert status["state"] == "interrupted" and "start it again" in status["error"]
    assert not (root / "20990101-000000-000000000000000c" / export_jobs.OUT_DIR).exists()
    assert json.loads((root / "20990101-000000-000000000000000b" / jobfiles.STATUS_FILE).read_text())["state"] == "completed"
