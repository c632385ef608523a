"""Feedback marks: each is saved whole with its conversation, adapter and settings; picks and edits make preference
pairs, thumbs up and edits make SFT rows; marks are refused where changes are, and tagged with the OAuth user."""

from __future__ import annotations

import json

import pytest

from llama_space.data import validate_any
from llama_space.errors import UserError
from llama_space.service.feedback import Feedback
from llama_space.service.permissions import Permissions
from llama_space.settings import Settings

ASKED = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def feedback(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    return Feedback(settings, Permissions(settings))


def test_marks_make_pairs_and_sft_rows(feedback, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    feedback.record("up", ASKED, "Ahoy!", "pirate", generation={"temperature": 0.7, "bad": [1]})
    feedback.record("down", ASKED, "Go away.", "base")
    feedback.record("edit", ASKED, "Hello.", "pirate", edited="Ahoy, matey!")
    feedback.record("pick", ASKED, "Ahoy!", "pirate", other_replies=["Hello.", "Hi there."])
    [up, *_] = feedback.marks()
    assert up["generation"] == {"temperature": 0.7} and up["adapter"] == "pirate" and up["user"] is None
    assert not list(feedback.root.glob(".*"))  # no staging file left behind

    data = feedback.dataset("preference")
    assert data["counts"] == {"marks": {"up": 1, "down": 1, "edit": 1, "pick": 1}, "preference_pairs": 3,
                              "sft_rows": 2}
    assert {"prompt": ASKED, "chosen": "Ahoy, matey!", "rejected": "Hello."} in data["rows"]
    assert {"prompt": ASKED, "chosen": "Ahoy!", "rejected": "Hi there."} in data["rows"]
    assert feedback.dataset("sft")["rows"][1] == {"messages": [*ASKED, {"role": "assistant", "content": "Ahoy, matey!"}]}

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    report = validate_any(feedback.jsonl("preference"), tokenizer, 64)
    assert report["kind"] == "preference" and report["valid_rows"] == 3 and report["format"] == "pairs"
    assert validate_any(feedback.jsonl("sft"), tokenizer, 64)["valid_rows"] == 2

    assert feedback.clear() == {"cleared": 4} and feedback.dataset()["counts"]["preference_pairs"] == 0
    with pytest.raises(UserError, match="No feedback makes sft rows yet"):
        feedback.jsonl("sft")


def test_a_mark_missing_what_it_needs_is_refused(feedback):
    with pytest.raises(UserError, match="kind must be one of up, down, edit, pick"):
        feedback.record("meh", ASKED, "x")
    with pytest.raises(UserError, match="An edit needs the reply it should have been"):
        feedback.record("edit", ASKED, "x", edited="x")
    with pytest.raises(UserError, match="A pick needs the other replies"):
        feedback.record("pick", ASKED, "x")
    with pytest.raises(UserError, match="must end with a user message"):
        feedback.record("up", [*ASKED, {"role": "assistant", "content": "x"}], "x")
    assert feedback.marks() == []


def test_marks_are_refused_on_an_exposed_app_and_tagged_on_a_space(tmp_path, monkeypatch):
    exposed = Settings(host="0.0.0.0", data_dir=tmp_path / "d1")
    with pytest.raises(UserError, match="reachable by anyone without a password"):
        Feedback(exposed, Permissions(exposed)).record("up", ASKED, "x")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "id")
    monkeypatch.setenv("SPACE_ID", "owner/space")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "owner")
    feedback = Feedback(exposed, Permissions(exposed, lambda: {"preferred_username": "owner"}))
    feedback.record("up", ASKED, "x")
    assert [mark["user"] for mark in feedback.marks()] == ["owner"]
    assert json.loads(next(feedback.root.glob("*.json")).read_text())["user"] == "owner"


def test_an_adapter_s_trained_prompt_is_used_when_the_caller_gives_none(tmp_path):
    from llama_space import adapters
    from llama_space.web.ui.chat_tab import header_markdown

    (tmp_path / "pirate").mkdir()
    adapters.write_metadata(tmp_path / "pirate", {"system_prompt": "You are a pirate."})
    asked = [{"role": "user", "content": "Hi"}]
    assert adapters.with_trained_prompt(asked, tmp_path, "pirate") == [
        {"role": "system", "content": "You are a pirate."}, *asked]
    own = [{"role": "system", "content": "Be brief."}, *asked]
    assert adapters.with_trained_prompt(own, tmp_path, "pirate") == own
    assert adapters.with_trained_prompt(asked, tmp_path, "") == asked
    assert adapters.with_trained_prompt("raw text", tmp_path, "pirate") == "raw text"
    # The chat's header says which system prompt is in force.
    assert "System prompt: the adapter's trained one, “You are a pirate.”" in header_markdown(tmp_path, "pirate", "")
    assert header_markdown(tmp_path, "pirate", "Be brief.").endswith("System prompt: Be brief.")
    assert header_markdown(tmp_path, "base", "").endswith("System prompt: none")


def test_a_mark_is_bounded(feedback):
    with pytest.raises(UserError, match="at most 256"):
        feedback.record("up", ASKED * 300, "x")
    with pytest.raises(UserError, match="more than 524288 characters"):
        feedback.record("up", [{"role": "user", "content": "x" * 600_000}], "x")
    with pytest.raises(UserError, match="at most 65536 characters"):
        feedback.record("up", ASKED, "x" * 70_000)
