"""Publishing to the Hub without a network: the model card, and the exact repo and commit operations sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export import merge, publish

from adapterutil import random_adapter

METADATA = {"base_model": "meta-llama/Llama-3.1-8B-Instruct", "dataset_name": "persona.jsonl",
            "dataset_fingerprint": "ab12cd34", "train_examples": 96, "steps": 30, "train_loss": 1.23456,
            "eval_loss": 1.5, "base_quantization": "nf4",
            "hyperparameters": {"lora_r": 8, "lora_alpha": 16, "learning_rate": 0.0002},
            "evaluation": {"source": "job 0123 held-out split", "examples": 24, "references": 24,
                           "dataset_fingerprint": "ef56", "created": "2026-12-02T03:00:00Z", "loss": 1.5,
                           "perplexity": 4.48, "exact_match": 0.25, "contains": 0.5, "tokens": 900,
                           "base": {"loss": 2.5, "perplexity": 12.18, "exact_match": 0.0, "contains": 0.125}}}


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records create_repo and create_commit, sends nothing."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))
        if self.fail:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **options):
        self.calls.append(("create_commit", repo_id, list(operations), options))


def sent(api: RecordingApi) -> dict[str, bytes]:
    """path in repo -> the bytes the commit would upload."""
    (_, _, operations, _), = [call for call in api.calls if call[0] == "create_commit"]
    return {op.path_in_repo: (op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                              else Path(op.path_or_fileobj).read_bytes()) for op in operations}


@pytest.fixture
def pirate(tiny_model_dir, tmp_path) -> Path:
    path = random_adapter(tiny_model_dir, tmp_path / "adapters" / "pirate", base_model="")
    adapters.write_metadata(path, METADATA)
    return path


def test_adapter_push_sends_its_files_and_a_card_in_one_private_commit(pirate):
    api = RecordingApi()
    url = publish.push_adapter(pirate.parent, "pirate", "me/pirate-lora", api=api)
    assert url == "https://huggingface.co/me/pirate-lora"
    assert api.calls[0] == ("create_repo", "me/pirate-lora", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert api.calls[1][3] == {"repo_type": "model", "commit_message": "Upload adapter pirate from Llama Space"}
    files = sent(api)
    assert list(files) == [adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.METADATA_FILE, publish.CARD_FILE]
    for name in list(files)[:3]:
        assert files[name] == (pirate / name).read_bytes()
    card = files[publish.CARD_FILE].decode()
    assert card.startswith('---\nbase_model: "meta-llama/Llama-3.1-8B-Instruct"\nlibrary_name: peft\n')
    for expected in ("| Dataset fingerprint (SHA-256) | ab12cd34 |", "| Training examples | 96 |",
                     "| Final training loss | 1.235 |", "| Held-out loss | 1.5 |",
                     "| Base quantization while training | nf4 |", "| lora_r | 8 |", "| learning_rate | 0.0002 |",
                     "| Figure | This model | Base model |", "| loss | 1.5 | 2.5 |", "| perplexity | 4.48 | 12.18 |",
                     "| exact_match | 0.25 | 0 |", "| Evaluated on | job 0123 held-out split |",
                     ('PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B-'
                      'Instruct", dtype="auto"), "me/pirate-lora")'),
                     "vllm serve meta-llama/Llama-3.1-8B-Instruct --enable-lora --lora-modules pirate=me/pirate-lora",
                     "ollama create pirate -f Modelfile"):
        assert expected in card, expected


def test_public_push_and_a_card_without_evaluation(pirate):
    adapters.write_metadata(pirate, {k: v for k, v in METADATA.items() if k != "evaluation"})
    api = RecordingApi()
    publish.push_adapter(pirate.parent, "pirate", "me/pirate-lora", private=False, api=api)
    assert api.calls[0][2]["private"] is False
    assert "No evaluation was recorded for this adapter." in sent(api)[publish.CARD_FILE].decode()


def test_merged_model_push_sends_the_whole_folder(tiny_model_dir, pirate, tmp_path):
    out = merge.merge_adapter(merge.plan_merge(tiny_model_dir, pirate), tmp_path / "pirate-merged")
    api = RecordingApi()
    publish.push("merged", out, "pirate", METADATA, "me/pirate", api=api)
    files = sent(api)
    assert sorted(files) == sorted([p.name for p in out.iterdir()] + [publish.CARD_FILE])
    assert files[merge.INDEX_FILE] == (out / merge.INDEX_FILE).read_bytes()
    card = files[publish.CARD_FILE].decode()
    assert "library_name: transformers" in card and "vllm serve me/pirate\n" in card
    assert 'AutoModelForCausalLM.from_pretrained("me/pirate", dtype="auto")' in card


def test_gguf_push_sends_the_file_and_modelfile(tmp_path):
    export = tmp_path / "out"
    export.mkdir()
    (export / "pirate-q8_0.gguf").write_bytes(b"GGUF")
    (export / "Modelfile").write_text("FROM ./pirate-q8_0.gguf\n")
    (export / "scratch.txt").write_text("not pushed")
    api = RecordingApi()
    publish.push("gguf", export, "pirate", METADATA, "me/pirate-gguf", qtype="q8_0", api=api)
    files = sent(api)
    assert list(files) == ["Modelfile", "pirate-q8_0.gguf", publish.CARD_FILE]
    card = files[publish.CARD_FILE].decode()
    assert "- gguf\n- q8_0\n" in card and "quantized to Q8_0" in card
    assert "ollama run hf.co/me/pirate-gguf" in card and "llama-server -m pirate-q8_0.gguf" in card


def test_refusals_say_what_to_fix(pirate, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="set HF_TOKEN"):
        publish.push_adapter(pirate.parent, "pirate", "me/pirate")
    for bad in ("no-namespace", "me/bad name", "a/b/c"):
        with pytest.raises(UserError, match="write it as your-name/model-name"):
            publish.push_adapter(pirate.parent, "pirate", bad, api=RecordingApi())
    response = type("Response", (), {"status_code": 403, "headers": {}, "request": None})()
    refused = RecordingApi(fail=HfHubHTTPError("403 Forbidden: secret server text /tmp/x", response=response))
    with pytest.raises(UserError) as error:
        publish.push_adapter(pirate.parent, "pirate", "other/pirate", api=refused)
    assert str(error.value).startswith("Could not push 'pirate' to 'other/pirate': the token may not write there")
    assert "secret" not in str(error.value)
    assert json.loads((pirate / adapters.METADATA_FILE).read_text()) == METADATA  # nothing changed locally
