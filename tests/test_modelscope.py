"""ModelScope models and datasets (`modelscope:<owner>/<name>`) with the network refused: a folder laid out as
ModelScope's client lays out its cache is loaded from (the client's own cache lookup finds it); what only a server
could answer (a download, an unknown id, a gated repository) comes from stand-ins of the client's two network
calls, raising the client's own exceptions; each failure says what to do. A ModelScope base is the same base as
its Hub name and its local copies."""

from __future__ import annotations

import json
import socket
import time
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest
from modelscope_hub import FileInfo, HubApi, errors
from safetensors import safe_open

from llama_space.data import HubDataset, hub_dataset, load_split
from llama_space.errors import ModelLoadError, UserError
from llama_space.export.base import check_same_base
from llama_space.export.card import model_card
from llama_space.model.loading import load_model
from llama_space.model.source import local_dir, resolve_model, same_base
from llama_space.service.actions import Actions
from llama_space.settings import Settings

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA = "modelscope:LLM-Research/Meta-Llama-3.1-8B-Instruct"
ROWS = [{"instruction": "What is the capital of Peru?", "output": "Ahoy! Lima, matey."},
        {"instruction": "What is the capital of Chile?", "output": "Ahoy! Santiago, matey."}]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing in these tests may reach ModelScope (or anything else)."""
    def refuse(*args, **kwargs):
        raise OSError("the network is off in these tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def snapshot(cache_dir: Path, kind: str, repo: str, revision: str = "master") -> Path:
    """Where ModelScope's client keeps `repo` in the app's cache."""
    return cache_dir / "modelscope" / f"{kind}s" / repo.replace("/", "--") / "snapshots" / revision


def link_files(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for file in source.iterdir():
        (folder / file.name).symlink_to(file)
    return folder


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class Server:
    """Stands in for the ModelScope server behind HubApi.list_repo_files and HubApi.download_repo (the client's
    cache lookup, download_repo with local_files_only, stays real): it raises `error`, or writes the files it
    would send into the cache where the client puts them."""

    def __init__(self, monkeypatch, files: dict[str, bytes | Path] | None = None,
                 error: Exception | None = None) -> None:
        self.files, self.error = files or {}, error
        self.listings: list[str] = []
        self.sent: list[str] = []
        real = HubApi.download_repo

        def download_repo(api, repo_id, repo_type, *, local_files_only=False, **kwargs):
            if local_files_only:
                return real(api, repo_id, repo_type, local_files_only=True, **kwargs)
            return self.download(repo_id, repo_type, **kwargs)

        def list_repo_files(api, repo_id, repo_type, *, revision=None, recursive=True):
            self.listings.append(repo_id)
            if self.error is not None:
                raise self.error
            return [FileInfo(path=name, size=self.size(name)) for name in self.files]

        monkeypatch.setattr(HubApi, "download_repo", download_repo)
        monkeypatch.setattr(HubApi, "list_repo_files", list_repo_files)

    def size(self, name: str) -> int:
        content = self.files[name]
        return content.stat().st_size if isinstance(content, Path) else len(content)

    def download(self, repo_id, repo_type, *, revision=None, cache_dir=None, allow_patterns=None, file_list=None,
                 **_) -> Path:
        if self.error is not None:
            raise self.error
        names = ([entry["Path"] for entry in file_list] if file_list is not None else
                 [name for name in self.files if not allow_patterns or any(fnmatch(name, p) for p in allow_patterns)])
        target = snapshot(Path(cache_dir).parent, repo_type, repo_id, revision or "master")
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            content = self.files[name]
            if isinstance(content, Path):
                (target / name).symlink_to(content)
            else:
                (target / name).write_bytes(content)
        self.sent += names
        return target


# ---- models ------------------------------------------------------------------------------------------------


def test_a_model_in_a_folder_laid_out_as_modelscopes_cache_loads_offline(tmp_path, embedded_dir):
    cache = tmp_path / "cache"
    folder = link_files(embedded_dir, snapshot(cache, "model", SMOL))
    model, tokenizer, source = load_model(f"modelscope:{SMOL}", "cpu", "float32", cache)
    assert source == str(folder)
    with safe_open(embedded_dir / "model.safetensors", "pt") as weights:
        assert model.model.embed_tokens.weight.equal(weights.get_tensor("model.embed_tokens.weight"))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reply = model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert "Paris" in tokenizer.decode(reply, skip_special_tokens=True)


def test_the_older_modelscope_cache_layout_is_found_too(tmp_path, embedded_dir):
    """ModelScope's SDKs before 1.38 kept `<owner>/<name>` with the dots of the name spelled "___"."""
    cache = tmp_path / "cache"
    folder = link_files(embedded_dir, cache / "modelscope" / "models" / "LLM-Research" / "Meta-Llama-3___1-8B-Instruct")
    assert resolve_model(LLAMA, cache) == str(folder) == str(local_dir(LLAMA, cache))
    assert same_base(LLAMA, str(folder))


def test_a_model_is_downloaded_into_the_apps_cache_once_without_the_original_checkpoint(
        tmp_path, embedded_dir, monkeypatch):
    files: dict[str, bytes | Path] = {path.name: path for path in embedded_dir.iterdir()}
    files |= {"original/consolidated.00.pth": b"16 GB in the real repository", "configuration.json": b"{}"}
    server = Server(monkeypatch, files)
    cache = tmp_path / "cache"
    source = resolve_model(f"modelscope:{SMOL}", cache)
    assert source == str(snapshot(cache, "model", SMOL))
    assert "original/consolidated.00.pth" not in server.sent and "model.safetensors" in server.sent
    assert resolve_model(f"modelscope:{SMOL}", cache) == source == str(local_dir(f"modelscope:{SMOL}", cache))
    assert len(set(server.sent)) == len(server.sent), "the second lookup found the cached copy"


def test_a_copy_missing_a_weight_file_is_not_taken_for_the_model(tmp_path, embedded_dir, monkeypatch):
    cache = tmp_path / "cache"
    partial = snapshot(cache, "model", SMOL)
    partial.mkdir(parents=True)
    (partial / "config.json").symlink_to(embedded_dir / "config.json")
    (partial / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (partial / "model-00001-of-00002.safetensors").write_bytes(b"")
    server = Server(monkeypatch, error=errors.NetworkError("Connection failed"))
    with pytest.raises(UserError, match="not reachable from this server"):
        resolve_model(f"modelscope:{SMOL}", cache)
    with pytest.raises(UserError, match="is not downloaded on this machine; start the app once with --model"):
        local_dir(f"modelscope:{SMOL}", cache)  # a request never downloads: it says how to get the model
    assert server.sent == []


def test_offline_with_nothing_cached_says_so(tmp_path):
    """The real client against a refused network: it retries a few seconds, then the app says what to do."""
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        load_model("modelscope:nobody/nothing", "cpu", "float32", tmp_path / "cache")
    message = str(caught.value)
    assert "The model modelscope:nobody/nothing is not in the app's cache and ModelScope is not reachable from this "\
           "server (offline)" in message
    assert "<data dir>/cache/modelscope/models/nobody--nothing/snapshots/master" in message
    assert str(tmp_path) not in message and "modelscope.cn" not in message
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(("error", "says"), [
    (errors.NotExistError("Repo nobody/nothing not found", status_code=404, request_id="r1"),
     "The model modelscope:nobody/nothing was not found on ModelScope; check the owner and name"),
    (errors.PermissionDeniedError("access denied", status_code=403),
     "ModelScope refused access to the model modelscope:nobody/nothing \\(it is gated or private"),
    (errors.AuthenticationError("token invalid", status_code=401), "set MODELSCOPE_API_TOKEN on the server"),
    (errors.FileDownloadError("1 of 3 files failed", failed_files={
        "model.safetensors": errors.PermissionDeniedError("licence not accepted", status_code=403)}),
     "accept its licence on its modelscope.cn page"),
    (errors.ServerError("HTTP 503", status_code=503), "could not serve the model .* try again later"),
])
def test_unknown_gated_and_failing_repositories_say_so(tmp_path, monkeypatch, error, says):
    Server(monkeypatch, error=error)
    with pytest.raises(ModelLoadError, match=says) as caught:
        load_model("modelscope:nobody/nothing", "cpu", "float32", tmp_path / "cache")
    assert "[E" not in str(caught.value) and "request_id" not in str(caught.value)


@pytest.mark.parametrize("bad", ["modelscope:", "modelscope:name", "modelscope:a/b/c", "modelscope:../etc",
                                 "modelscope:owner/..", "modelscope:owner name/x"])
def test_malformed_ids_are_refused_before_any_lookup(tmp_path, monkeypatch, bad):
    server = Server(monkeypatch, error=AssertionError("no lookup for a malformed id"))
    with pytest.raises(ModelLoadError, match="A ModelScope model is named modelscope:<owner>/<name>"):
        load_model(bad, "cpu", "float32", tmp_path)
    with pytest.raises(UserError, match="A ModelScope dataset is named modelscope:<owner>/<name>"):
        HubDataset(bad)
    assert server.listings == [] and server.sent == []


# ---- the same base -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("other", "same"), [
    ("meta-llama/Llama-3.1-8B-Instruct", True),  # the Hub's name since Meta dropped "Meta-"
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", True),
    ("/models/Meta-Llama-3.1-8B-Instruct/", True),
    ("/root/autodl-tmp/LLM-Research/Meta-Llama-3___1-8B-Instruct", True),  # the older ModelScope cache
    ("data/cache/modelscope/models/LLM-Research--Meta-Llama-3.1-8B-Instruct/snapshots/master", True),
    ("/root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots/0e9e39f2", True),
    ("modelscope:LLM-Research/Meta-Llama-3-8B-Instruct", False),
    ("meta-llama/Llama-3.1-70B-Instruct", False),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", False),
])
def test_a_modelscope_base_is_the_same_base_as_its_hub_name_and_local_copies(other, same):
    assert same_base(LLAMA, other) is same and same_base(other, LLAMA) is same


def test_an_adapter_trained_on_a_modelscope_base_merges_only_into_that_model():
    metadata = {"base_model": LLAMA}
    check_same_base(metadata, "/models/Meta-Llama-3.1-8B-Instruct", "pirate")
    check_same_base(metadata, "meta-llama/Llama-3.1-8B-Instruct", "pirate")
    with pytest.raises(UserError, match=f"start the app with --model {LLAMA} to merge it"):
        check_same_base(metadata, "meta-llama/Llama-3.2-1B-Instruct", "pirate")


def test_a_model_card_names_a_modelscope_base_in_its_text_only():
    card = model_card("adapter", "pirate", {"base_model": LLAMA}, "me/pirate")
    front_matter = card.split("---")[1]
    assert "base_model" not in front_matter and "library_name: peft" in front_matter
    assert f"for `{LLAMA}`" in card and "`modelscope download LLM-Research/Meta-Llama-3.1-8B-Instruct --local-dir " \
                                        "base-model`" in card
    assert 'AutoModelForCausalLM.from_pretrained("./base-model"' in card and 'pretrained("modelscope:' not in card


# ---- datasets ----------------------------------------------------------------------------------------------


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_dataset_in_a_folder_laid_out_as_modelscopes_cache_is_read_offline(tmp_path):
    cache = tmp_path / "cache"
    folder = snapshot(cache, "dataset", "owner/tiny")
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_bytes(jsonl(ROWS))
    (folder / "test.jsonl").write_bytes(jsonl(ROWS[:1]))
    other = snapshot(cache, "dataset", "owner/tiny", "v2")
    other.mkdir(parents=True)
    (other / "train.jsonl").write_bytes(jsonl(ROWS[1:]))
    out = tmp_path / "out"
    out.mkdir()
    train = load_split(hub_dataset("modelscope:owner/tiny"), out, 2**20, None, cache)
    assert rows(train) == ROWS and train.name == "modelscope_owner_tiny-default-train.jsonl"
    assert rows(load_split(hub_dataset("modelscope:owner/tiny", split="test"), out, 2**20, None, cache)) == ROWS[:1]
    assert rows(load_split(hub_dataset("modelscope:owner/tiny", revision="v2"), out, 2**20, None, cache)) == ROWS[1:]


def test_a_dataset_is_downloaded_with_its_data_files_only(tmp_path, monkeypatch):
    card = b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n---\n"
    server = Server(monkeypatch, {"README.md": card, "configuration.json": b'{"framework": "pytorch"}',
                                  "data/train.jsonl": jsonl(ROWS), "images/cover.png": b"\x89PNG"})
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    assert rows(load_split(hub_dataset("modelscope:owner/tiny"), out, 2**20, None, cache)) == ROWS
    assert sorted(server.sent) == ["README.md", "data/train.jsonl"]
    assert rows(load_split(hub_dataset("modelscope:owner/tiny"), out, 2**20, None, cache)) == ROWS
    assert server.listings == ["owner/tiny"], "the second read used the cached copy"


def test_a_dataset_past_the_size_limit_is_refused_before_anything_is_downloaded(tmp_path, monkeypatch):
    server = Server(monkeypatch, {"train.jsonl": jsonl(ROWS * 50), "README.md": b"# tiny\n"})
    with pytest.raises(UserError, match="holds more than the 0 MB limit for training data"):
        load_split(hub_dataset("modelscope:owner/tiny"), tmp_path, 1000, None, tmp_path / "cache")
    assert server.sent == []
    Server(monkeypatch, {"README.md": b"# no data\n", "model.bin": b"0"})
    with pytest.raises(UserError, match="has no JSON, JSONL, CSV or Parquet data files"):
        load_split(hub_dataset("modelscope:owner/empty"), tmp_path, 2**20, None, tmp_path / "cache")


OFFLINE = (r"\(offline\): connect it, or copy the repository's files into "
           r"<data dir>/cache/modelscope/datasets/owner--tiny/snapshots/master")


@pytest.mark.parametrize(("error", "says"), [
    (errors.NotExistError("not found", status_code=404), "The dataset modelscope:owner/tiny was not found"),
    (errors.PermissionDeniedError("denied", status_code=403), "refused access to the dataset .* gated or private"),
    (errors.NetworkError("Connection failed"), OFFLINE),
])
def test_unknown_gated_and_unreachable_datasets_say_so(tmp_path, monkeypatch, error, says):
    Server(monkeypatch, error=error)
    with pytest.raises(UserError, match=says) as caught:
        load_split(hub_dataset("modelscope:owner/tiny"), tmp_path, 2**20, None, tmp_path / "cache")
    assert str(tmp_path) not in str(caught.value)


def test_the_fine_tuning_actions_read_modelscope_datasets_from_the_apps_cache(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    folder = snapshot(settings.cache_dir, "dataset", "owner/tiny")
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_bytes(jsonl(ROWS))
    backend = SimpleNamespace(settings=settings, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir))
    actions = Actions(backend, SimpleNamespace(), SimpleNamespace(require_change=lambda: None))
    report = actions.validate(None, 128, hub_dataset("modelscope:owner/tiny"))
    assert report["ok"] and report["valid_rows"] == 2 and "Lima" in "".join(report["preview"])
