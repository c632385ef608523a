"""Hub datasets (data/hub.py, Actions): a dataset folder on disk read by load_dataset as a Hub repo would be
(configurations, splits), the rows written as JSONL for the file flow, and clear refusals; never the network."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from llama_space.data import HubDataset, hub_dataset, load_split
from llama_space.errors import UserError
from llama_space.service.actions import Actions
from llama_space.settings import Settings

PIRATE = [{"instruction": "What is the capital of Peru?", "output": "Ahoy! Lima, matey."},
          {"instruction": "What is the capital of Chile?", "output": "Ahoy! Santiago, matey."}]
PLAIN = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]
CARD = """---
configs:
- config_name: pirate
  default: true
  data_files:
  - split: train
    path: pirate/train.jsonl
  - split: test
    path: pirate/test.jsonl
- config_name: plain
  data_files:
  - split: train
    path: plain/train.jsonl
---
"""


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    """data/datasets with owner/tiny (two configurations, as a Hub dataset repo lays them out), owner/parquet
    (Parquet files) and owner/broken (a file that is not what its name says)."""
    root = tmp_path_factory.mktemp("data") / "datasets"
    repo = root / "owner" / "tiny"
    (repo / "pirate").mkdir(parents=True)
    (repo / "plain").mkdir()
    (repo / "README.md").write_text(CARD)
    (repo / "pirate" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PIRATE))
    (repo / "pirate" / "test.jsonl").write_text(json.dumps(PIRATE[0]) + "\n")
    (repo / "plain" / "train.jsonl").write_text(json.dumps(PLAIN[0]) + "\n")
    (root / "owner" / "parquet" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(PIRATE), root / "owner" / "parquet" / "data" / "train-00000.parquet")
    (root / "owner" / "broken").mkdir()
    (root / "owner" / "broken" / "train.jsonl").write_text('{"instruction": "Hi", "output": "Hello"}\n{oops\n')
    return root


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_configurations_and_splits_load_as_jsonl(datasets_root, tmp_path):
    assert rows(load_split(HubDataset("owner/tiny"), tmp_path, 2**20, datasets_root)) == PIRATE
    assert rows(load_split(HubDataset("owner/tiny", split="test"), tmp_path, 2**20, datasets_root)) == PIRATE[:1]
    plain = load_split(HubDataset("owner/tiny", config="plain"), tmp_path, 2**20, datasets_root)
    assert rows(plain) == PLAIN and plain.name == "owner_tiny-plain-train.jsonl"
    assert rows(load_split(HubDataset("owner/parquet"), tmp_path, 2**20, datasets_root)) == PIRATE


@pytest.mark.parametrize(("source", "says"), [
    (HubDataset("owner/tiny", split="validation"), "has no split 'validation'; check dataset_config"),
    (HubDataset("owner/tiny", config="nope"), "has no split 'train' in configuration 'nope'"),
])
def test_missing_splits_and_configurations_say_so(datasets_root, tmp_path, source, says):
    with pytest.raises(UserError, match=says) as caught:
        load_split(source, tmp_path, 2**20, datasets_root)
    assert str(datasets_root) not in str(caught.value)


def test_damaged_data_files_say_so(datasets_root, tmp_path):
    with pytest.raises(UserError, match="its data files could not be read"):
        load_split(HubDataset("owner/broken"), tmp_path, 2**20, datasets_root)


def test_a_split_past_the_size_limit_is_refused(datasets_root, tmp_path):
    with pytest.raises(UserError, match="larger than the 0 MB limit"):
        load_split(HubDataset("owner/tiny"), tmp_path, 60, datasets_root)


def test_an_unknown_id_offline_fails_fast_with_a_clean_message(tmp_path):
    import datasets

    assert datasets.config.HF_HUB_OFFLINE, "conftest runs the tests with HF_HUB_OFFLINE=1"
    started = time.monotonic()
    with pytest.raises(UserError, match="Hugging Face Hub is not reachable from this server") as caught:
        load_split(HubDataset("nobody/no-such-dataset"), tmp_path, 2**20, tmp_path / "none")
    assert time.monotonic() - started < 10
    assert "OfflineModeIsEnabled" not in str(caught.value) and "Couldn't reach" not in str(caught.value)


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "a/b/c", "owner/..", "owner name", ""])
def test_ids_that_are_not_hub_ids_are_refused(bad):
    with pytest.raises(UserError, match="dataset_id must be a Hub dataset id"):
        HubDataset(bad)
    with pytest.raises(UserError, match="dataset_split must be a split name"):
        HubDataset("owner/tiny", split="train[:10]")


def test_a_folder_of_the_same_name_on_the_server_is_never_read(tmp_path, monkeypatch):
    (tmp_path / "adapters" / "secret").mkdir(parents=True)
    (tmp_path / "adapters" / "secret" / "train.jsonl").write_text(json.dumps(PIRATE[0]) + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="cannot be read from the Hub on this server"):
        load_split(HubDataset("adapters/secret"), tmp_path, 2**20, tmp_path / "datasets")


LOADER_NAMES = ["json", "csv", "text", "parquet", "arrow", "imagefolder", "./", ".", "train", "train/", "./train"]


def packaged_builders() -> list[str]:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return sorted(_PACKAGED_DATASETS_MODULES)


@pytest.mark.parametrize("name", LOADER_NAMES + [n for n in packaged_builders() if n not in LOADER_NAMES])
def test_loader_names_never_read_the_working_directory(tmp_path, monkeypatch, name):
    secret = "canary-0c41: the server's own files"
    row = json.dumps({"instruction": secret, "output": secret})
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for suffix in (".json", ".jsonl", ".csv", ".txt"):
            (tmp_path / split / f"secret{suffix}").write_text(row + "\n")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="dataset_id must be a Hub dataset id such as 'owner/name', owner "
                                        "included") as caught:
        load_split(hub_dataset(name), tmp_path / "out", 2**20, tmp_path / "datasets")
    assert secret not in str(caught.value) and not any((tmp_path / "out").iterdir())


class RecordingRunner:
    """Stands in for JobRunner: keeps the dataset file's rows as the job would copy them."""

    def __init__(self) -> None:
        self.started: list[tuple[Path, list[dict]]] = []

    def start(self, path, adapter_name, params) -> str:
        self.started.append((Path(path), rows(Path(path))))
        return "job-1"


def test_actions_validate_and_start_on_a_hub_dataset(datasets_root, tiny_model_dir):
    settings = Settings(model=str(tiny_model_dir), data_dir=datasets_root.parent, adapters_dir=datasets_root / "a")
    backend = SimpleNamespace(settings=settings, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir))
    runner = RecordingRunner()
    actions = Actions(backend, runner, SimpleNamespace(require_change=lambda: None))

    report = actions.validate(None, 128, hub_dataset("owner/tiny", "", "", ""))
    assert report["ok"] and report["valid_rows"] == 2 and "Lima" in "".join(report["preview"])
    assert actions.start(None, "from-hub", actions.params("quick", {}), hub_dataset("owner/tiny")) == "job-1"
    [(path, copied)] = runner.started
    assert copied == PIRATE and not path.exists(), "the JSONL file is scratch, gone once the job has its copy"
    assert hub_dataset("  ") is None
    with pytest.raises(UserError, match="either a dataset file or a Hub dataset"):
        actions.validate("data.jsonl", 128, hub_dataset("owner/tiny"))
