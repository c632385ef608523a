"""The adapters dir: names, atomic publishing, listing, delete, zip and push."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export import publish


def _make_adapter(root: Path, name: str, **meta) -> Path:
    staging = adapters.staging_path(root, name)
    (staging / adapters.CONFIG_FILE).write_text(json.dumps({"base_model_name_or_path": "base/model", "r": 8}))
    (staging / adapters.WEIGHTS_FILE).write_bytes(b"weights")
    adapters.write_metadata(staging, {"base_model": "base/model", **meta})
    return adapters.publish(staging, root, name)


@pytest.mark.parametrize("name", [
    "../x", "/abs", "a/b", "a\\b", "x\x00y", "\u0430dapter", "ad\u0430pter", "base", "BASE", "", ".hidden",
    "a..b", "x" * 65, "trailing\n", "sp ace", None, 5])
def test_invalid_names_are_refused(name, tmp_path):
    with pytest.raises(UserError, match="Invalid adapter name"):
        adapters.validate_name(name)
    with pytest.raises(UserError):
        adapters.delete(tmp_path, name)


def test_publish_is_atomic_and_never_overwrites(tmp_path):
    path = _make_adapter(tmp_path, "mine", train_loss=1.5)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.METADATA_FILE])
    assert not list(tmp_path.glob(".tmp-*"))
    staging = adapters.staging_path(tmp_path, "mine")
    (staging / adapters.CONFIG_FILE).write_text("{}")
    (staging / adapters.WEIGHTS_FILE).write_bytes(b"other")
    with pytest.raises(UserError, match="'mine' exists; choose another name or delete it"):
        adapters.publish(staging, tmp_path, "mine")
    assert (path / adapters.WEIGHTS_FILE).read_bytes() == b"weights"
    incomplete = adapters.staging_path(tmp_path, "half")
    with pytest.raises(UserError, match="not saved completely"):
        adapters.publish(incomplete, tmp_path, "half")
    assert adapters.list_names(tmp_path) == ["mine"]  # temp dirs never show up


def test_describe_delete_and_zip(tmp_path):
    _make_adapter(tmp_path, "b-one", train_loss=1.0)
    _make_adapter(tmp_path, "a-two", eval_loss=2.0)
    rows = adapters.describe(tmp_path)
    assert [r["name"] for r in rows] == ["a-two", "b-one"]
    assert rows[0]["eval_loss"] == 2.0 and rows[1]["train_loss"] == 1.0 and rows[1]["base_model"] == "base/model"

    archive = adapters.zip_adapter(tmp_path, "b-one", tmp_path / "out")
    assert archive == tmp_path / "out" / "b-one.zip"
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted(f"b-one/{f}" for f in (
            adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.METADATA_FILE))
        assert z.read(f"b-one/{adapters.WEIGHTS_FILE}") == b"weights"

    adapters.delete(tmp_path, "b-one")
    assert adapters.list_names(tmp_path) == ["a-two"] and not (tmp_path / "b-one").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deleting")]
    for call in (lambda: adapters.delete(tmp_path, "b-one"), lambda: adapters.zip_adapter(tmp_path, "nope", tmp_path)):
        with pytest.raises(UserError, match="no adapter named"):
            call()


def test_push_without_token_or_offline_says_what_to_do(tmp_path, monkeypatch):
    _make_adapter(tmp_path, "mine")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="HF_TOKEN"):
        publish.push_adapter(tmp_path, "mine", "user/mine")
    # The tests run offline (HF_HUB_OFFLINE=1): a token alone must not lead to a network attempt.
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        publish.push_adapter(tmp_path, "mine", "user/mine", token="hf_dummy")
    with pytest.raises(UserError, match="no adapter named"):
        publish.push_adapter(tmp_path, "missing", "user/missing", token="hf_dummy")


def test_push_network_failure_is_a_user_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    _make_adapter(tmp_path, "mine")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(UserError, match="Could not push 'mine'.*network connection"):
        publish.push_adapter(tmp_path, "mine", "user/mine", token="hf_dummy")
