"""Every named Gradio endpoint shows real parameter names, types and defaults in view_api(), and the lifecycle
endpoints work from gradio_client by keyword, positionally and with optional parameters left out."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from llama_space.settings import Settings
from llama_space.training.params import TrainingParams

from apputil import launched_app
from conftest import REPO

PERSONA = REPO / "examples" / "persona.jsonl"
NULLABLE = re.compile(r"\bNone\b")
# The contract's required parameters; every other parameter of these endpoints has a default.
REQUIRED = {"/chat": ["message"], "/generate": ["prompt"], "/validate_dataset": ["file"],
            "/start_training": ["file", "adapter_name"], "/job_status": ["job_id"], "/cancel_training": ["job_id"],
            "/resume_training": ["job_id"], "/list_adapters": [], "/delete_adapter": ["name"]}


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-names")
    # A dataset folder standing in for the Hub dataset "owner/persona" (load_dataset reads it the same way).
    folder = root / "data" / "datasets" / "owner" / "persona"
    folder.mkdir(parents=True)
    shutil.copy(PERSONA, folder / "train.jsonl")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data")
    with launched_app(settings) as launched:
        yield launched


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def endpoints(client) -> dict:
    return client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_every_parameter_has_a_name_a_type_and_a_default_when_optional(endpoints):
    assert set(REQUIRED) <= set(endpoints)
    problems = []
    for api_name, info in endpoints.items():
        for param in info["parameters"]:
            name, python_type = param["parameter_name"], param["python_type"]["type"]
            if not name or re.fullmatch(r"param_\d+", name):
                problems.append(f"{api_name}: parameter {param['label']!r} has no real name ({name!r})")
            if not param["type"] or python_type in ("", "Any"):
                problems.append(f"{api_name}({name}): no type")
            required = REQUIRED.get(api_name, [])
            if not param["parameter_has_default"] and name not in required and NULLABLE.search(python_type):
                problems.append(f"{api_name}({name}): accepts None but has no default")
            if param["parameter_has_default"] and name in required:
                problems.append(f"{api_name}({name}): the contract makes it required")
    assert problems == []


def test_the_contract_signatures(endpoints):
    def params(api_name):
        return {p["parameter_name"]: p for p in endpoints[api_name]["parameters"]}

    for api_name, required in REQUIRED.items():
        got = params(api_name)
        assert [name for name, p in got.items() if not p["parameter_has_default"]] == required, api_name
    start = params("/start_training")
    field_names = {field.name for field in dataclasses.fields(TrainingParams)}
    assert field_names <= set(start), "every TrainingParams field is a /start_training parameter"
    assert all(start[name]["parameter_default"] is None for name in field_names)
    assert start["preset"]["parameter_default"] == "standard"
    assert set(start) == field_names | {"file", "adapter_name", "preset", "dataset_id", "dataset_config",
                                        "dataset_split", "dataset_revision"}
    assert params("/validate_dataset")["max_length"]["parameter_default"] == 384
    assert params("/chat")["history"]["parameter_default"] == []
    for api_name in ("/chat", "/generate"):
        assert {"top_k", "repetition_penalty"} <= set(params(api_name))
    assert all(endpoints[api_name]["description"] for api_name in REQUIRED), "docstrings describe each endpoint"


def test_generate_by_keyword_positionally_and_with_defaults(client):
    by_keyword = client.predict(prompt="Hello", max_new_tokens=6, temperature=0, top_k=5,
                                repetition_penalty=1.1, api_name="/generate")
    positional = client.predict("Hello", "", "", 6, 0.0, 0.9, 5, 1.1, api_name="/generate")
    assert isinstance(by_keyword, str) and by_keyword == positional
    assert client.predict(message="Hello", max_new_tokens=6, temperature=0, top_k=5, repetition_penalty=1.1,
                          api_name="/chat") == by_keyword  # history left out: an empty conversation
    with pytest.raises(AppError, match="repetition_penalty must be between"):
        client.predict(prompt="Hello", repetition_penalty=9.0, api_name="/generate")


def test_lifecycle_endpoints_by_keyword(app, client):
    report = client.predict(file=handle_file(str(PERSONA)), api_name="/validate_dataset")
    assert report["ok"] and report["valid_rows"] == 96 and report["max_length"] == 384
    assert client.predict(file=handle_file(str(PERSONA)), max_length=64,
                          api_name="/validate_dataset")["max_length"] == 64
    job_id = client.predict(file=handle_file(str(PERSONA)), adapter_name="by-keyword", preset="quick",
                            max_steps=1, lora_r=4, target_modules=["q_proj", "v_proj"], placement="process",
                            method="sft", api_name="/start_training")["job_id"]
    job = json.loads((Path(app.settings.data_dir) / "jobs" / job_id / "job.json").read_text())
    quick = TrainingParams.preset("quick")
    given = {"max_steps": 1, "lora_r": 4, "target_modules": ["q_proj", "v_proj"], "placement": "process",
             "method": "sft"}
    kept = {"learning_rate": quick.learning_rate, "max_length": quick.max_length, "lora_alpha": quick.lora_alpha}
    assert {key: job["params"][key] for key in {**given, **kept}} == {**given, **kept}
    assert client.predict(job_id=job_id, api_name="/job_status")["job_id"] == job_id
    client.predict(job_id=job_id, api_name="/cancel_training")
    with pytest.raises(AppError, match="only an interrupted job can be resumed"):
        client.predict(job_id=job_id, api_name="/resume_training")
    assert client.predict(api_name="/list_adapters") == []
    with pytest.raises(AppError, match="method must be one of sft, dpo, orpo, got 'nope'"):
        client.predict(file=handle_file(str(PERSONA)), adapter_name="no-method", method="nope",
                       api_name="/start_training")
    with pytest.raises(AppError, match="no adapter named 'nothing'"):
        client.predict(name="nothing", api_name="/delete_adapter")


def test_hub_dataset_by_keyword(client):
    report = client.predict(file=None, dataset_id="owner/persona", api_name="/validate_dataset")
    assert report["ok"] and report["valid_rows"] == 96
    with pytest.raises(AppError, match="has no split 'test'"):
        client.predict(file=None, dataset_id="owner/persona", dataset_split="test", api_name="/validate_dataset")
    with pytest.raises(AppError, match="either a dataset file or a Hub dataset"):
        client.predict(file=handle_file(str(PERSONA)), dataset_id="owner/persona", api_name="/validate_dataset")


def test_a_raw_path_is_not_a_file(client):
    with pytest.raises(AppError, match="handle_file"):
        client.predict(file=str(PERSONA), api_name="/validate_dataset")
    with pytest.raises(AppError, match="handle_file"):
        client.predict(file={"path": "/etc/passwd"}, adapter_name="x", api_name="/start_training")


def test_every_endpoint_is_documented_with_its_parameters(endpoints):
    api = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in endpoints if f"`{name}" not in api]
    assert not missing, f"document these endpoints in docs/api.md, with an example: {missing}"
    unnamed = [f"{name}({param['parameter_name']})" for name, info in endpoints.items()
               for param in info["parameters"] if param["parameter_name"] not in api]
    assert not unnamed, f"docs/api.md never names these parameters: {unnamed}"
