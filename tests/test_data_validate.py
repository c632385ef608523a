"""The validation report: per-row problems with row numbers, duplicates, truncation, previews, the example data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llama_space.data import build_examples, load_conversations, render_preview, validate_file
from llama_space.data.formats import to_messages
from llama_space.data.limits import TokenBudget
from llama_space.errors import UserError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "persona.jsonl"
GOOD = {"instruction": "Say hi.", "output": "Hi!"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def test_alpaca_field_errors_have_row_numbers_and_rows_are_skipped(tokenizer, tmp_path):
    rows = [GOOD, {"instruction": "No answer."}, {"instruction": 7, "output": "x"},
            {"instruction": "Blank.", "output": "  "}, {"instruction": "Odd input.", "input": ["x"], "output": "y"}]
    report = validate_file(write_jsonl(tmp_path / "a.jsonl", rows), tokenizer, max_length=128)
    assert report["errors"] == [
        {"row": 2, "message": "'output' is missing"},
        {"row": 3, "message": "'instruction' must be text, got int"},
        {"row": 4, "message": "'output' is empty"},
        {"row": 5, "message": "'input' must be text, got list"},
    ]
    assert (report["ok"], report["rows"], report["valid_rows"], report["skipped_rows"]) == (True, 5, 1, 4)
    assert report["summary"] == "1 of 5 rows (alpaca format) will be trained; skipped: 4 with errors."


def test_conversation_errors(tokenizer, tmp_path):
    rows = [chat(("user", "Q"), ("assistant", "A")),
            chat(("user", "Q"), ("bot", "A")),
            chat(("user", "Only a question")),
            chat(("user", "Q"), ("assistant", "")),
            chat(("assistant", "I speak first"), ("user", "Q"), ("assistant", "A")),
            chat(("user", "Q"), ("system", "Late system"), ("assistant", "A")),
            chat(("user", None), ("assistant", "A")),
            {"messages": "not a list"}]
    report = validate_file(write_jsonl(tmp_path / "c.jsonl", rows), tokenizer, max_length=128)
    assert report["errors"] == [
        {"row": 2, "message": "turn 2: role 'bot' is not one of system, user, assistant"},
        {"row": 3, "message": "the conversation has no assistant turn to learn from"},
        {"row": 4, "message": "turn 2: the assistant reply is empty"},
        {"row": 5, "message": "the conversation must start with a user turn (after an optional system message)"},
        {"row": 6, "message": "turn 2: a system message may only come first"},
        {"row": 7, "message": "turn 1: 'content' is missing"},
        {"row": 8, "message": "'messages' must be a non-empty list of turns"},
    ]
    assert (report["format"], report["valid_rows"], report["error_count"]) == ("chat", 1, 7)


def test_sharegpt_bad_speaker(tokenizer, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    report = validate_file(write_jsonl(tmp_path / "s.jsonl", rows), tokenizer, max_length=128)
    assert report["errors"] == [
        {"row": 1, "message": "turn 2: from 'robot' is not one of system, user, assistant, human, gpt"}]


def test_duplicates_name_the_row_they_repeat(tokenizer, tmp_path):
    other = {"instruction": "Say bye.", "output": "Bye!"}
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [GOOD, other, GOOD, other, GOOD]), tokenizer, 128)
    assert report["duplicates"] == 3
    assert report["warnings"] == [{"row": 3, "message": "exact duplicate of row 1; skipped"},
                                  {"row": 4, "message": "exact duplicate of row 2; skipped"},
                                  {"row": 5, "message": "exact duplicate of row 1; skipped"}]
    assert report["valid_rows"] == 2
    assert len(build_examples(tmp_path / "d.jsonl", tokenizer, 128)) == 2


def test_too_long_rows_are_counted_and_truncated(tokenizer, tmp_path):
    rows = [GOOD, {"instruction": "Count.", "output": "one two three " * 30},
            {"instruction": "More.", "output": "four five six " * 30}]
    report = validate_file(write_jsonl(tmp_path / "t.jsonl", rows), tokenizer, max_length=64)
    assert (report["too_long"], report["valid_rows"], report["max_length"]) == (2, 3, 64)
    assert report["warnings"][0] == {
        "row": None, "message": "2 rows are longer than max_length=64 tokens and are truncated: rows 2, 3"}
    assert report["token_stats"]["max"] > 64 >= report["token_stats"]["min"]
    assert "2 longer than 64 tokens are truncated" in report["summary"]
    assert report["trainable_tokens"] == sum(
        sum(label != -100 for label in row["labels"]) for row in build_examples(tmp_path / "t.jsonl", tokenizer, 64))


def test_token_stats(tokenizer, tmp_path):
    rows = [{"instruction": "Say hi.", "output": "word " * n} for n in range(1, 21)]
    report = validate_file(write_jsonl(tmp_path / "s.jsonl", rows), tokenizer, max_length=512)
    lengths = sorted(len(row["input_ids"]) for row in build_examples(tmp_path / "s.jsonl", tokenizer, 512))
    assert report["token_stats"] == {"min": lengths[0], "median": (lengths[9] + lengths[10]) / 2,
                                     "p95": lengths[18], "max": lengths[19]}


def test_csv_formula_cells_are_warned_about(tokenizer, tmp_path):
    path = tmp_path / "f.csv"
    path.write_text('instruction,output\nSum it,=SUM(A1:A3)\nSay hi,Hi!\n@who,-1\n', encoding="utf-8")
    report = validate_file(path, tokenizer, max_length=128)
    assert report["valid_rows"] == 3
    assert [(w["row"], w["message"].split(":")[0]) for w in report["warnings"]] == [
        (1, "'output' starts with '='"), (3, "'instruction' starts with '@'; 'output' starts with '-'")]
    assert "formula" in report["warnings"][0]["message"]


def test_no_valid_rows_is_not_ok(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a"}, {"instruction": "b", "output": ""}])
    report = validate_file(path, tokenizer, max_length=128)
    assert (report["ok"], report["valid_rows"], report["preview"], report["token_stats"]) == (False, 0, [], None)
    assert report["summary"].startswith("Nothing to train: none of the 2 rows is usable (2 with errors)")
    with pytest.raises(UserError, match=r"Nothing to train.*row 1: 'output' is missing; row 2: 'output' is empty"):
        build_examples(path, tokenizer, max_length=128)
    with pytest.raises(UserError, match=r"None of the 2 rows is usable: row 1: 'output' is missing"):
        load_conversations(path)


def test_error_list_is_capped_but_counted(tokenizer, tmp_path):
    report = validate_file(write_jsonl(tmp_path / "m.jsonl", [GOOD] + [{"instruction": "x"}] * 60), tokenizer, 128)
    assert (len(report["errors"]), report["error_count"], report["errors"][-1]["row"]) == (50, 60, 51)


def test_report_is_json_serializable(tokenizer, tmp_path):
    report = validate_file(write_jsonl(tmp_path / "a.jsonl", [GOOD]), tokenizer, max_length=128)
    assert json.loads(json.dumps(report)) == report
    assert len(report["fingerprint"]) == 16


def test_preview_escapes_html_and_marks_trained_spans(tokenizer):
    messages = [{"role": "user", "content": "Show <b>bold</b>"},
                {"role": "assistant", "content": "<script>alert(1)</script>"}]
    html = render_preview(tokenizer, messages, max_length=512)
    assert "<script>" not in html and "<b>" not in html
    assert ">&lt;script&gt;alert(1)&lt;/script&gt;&lt;|im_end|&gt;</mark>" in html
    assert html.count("<mark") == 1
    assert 'opacity:0.55">&lt;|im_start|&gt;system\nYou are a helpful AI assistant' in html
    assert "Show &lt;b&gt;bold&lt;/b&gt;" in html


def test_preview_shows_truncation(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 50}]
    html = render_preview(tokenizer, messages, max_length=40)
    assert "more tokens cut off by max_length=40" in html


def test_report_previews_the_first_rows(tokenizer, tmp_path):
    rows = [{"instruction": f"Question {n}?", "output": f"Answer {n}."} for n in range(5)]
    report = validate_file(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer, 128, preview_rows=2)
    assert len(report["preview"]) == 2 and "Answer 1.&lt;|im_end|&gt;</mark>" in report["preview"][1]


def test_example_persona_file_is_clean_and_consistent(tokenizer):
    report = validate_file(EXAMPLES, tokenizer, max_length=256)
    assert (report["ok"], report["error_count"], report["warning_count"]) == (True, 0, 0)
    assert 60 <= report["valid_rows"] == report["rows"] <= 120
    _, rows = load_conversations(EXAMPLES)
    replies = [row[-1]["content"] for row in rows]
    assert all(reply.startswith("Ahoy! ") and reply.endswith(" Fair winds, matey!") for reply in replies)
    reply_tokens = [len(tokenizer(reply)["input_ids"]) for reply in replies]
    assert 15 <= min(reply_tokens) and max(reply_tokens) <= 60


def test_token_counts_stop_at_the_budget_but_every_row_is_checked_and_trained(tokenizer, tmp_path):
    long = {"instruction": "Explain.", "output": "Because " * 80}
    rows = [GOOD, long, {"instruction": "Q3", "output": "A3"}, {"instruction": "x"},
            {**long, "instruction": "Explain again."}, GOOD, {"instruction": "Q7", "output": "A7"}, {"output": 8}]
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    report = validate_file(path, tokenizer, max_length=64, budget=TokenBudget(rows=3))
    # Rows 1-3 tokenized; after them rows 4 and 8 are still errors and 6 a duplicate; 5 and 7 are counted unseen.
    assert (report["rows"], report["tokenized_rows"], report["valid_rows"], report["skipped_rows"]) == (8, 3, 5, 3)
    assert ([e["row"] for e in report["errors"]], report["duplicates"], report["too_long"]) == ([4, 8], 1, 1)
    assert report["summary"] == ("5 of 8 rows (alpaca format) will be trained; skipped: 2 with errors, 1 exact "
                                 "duplicates; 1 longer than 64 tokens are truncated. Token counts are from rows 1-3 "
                                 "only: the other 2 usable rows were checked for format, not tokenized.")
    assert report["warnings"][0]["row"] is None
    assert "validation tokenizes at most 3 rows" in report["warnings"][0]["message"]
    assert "training tokenizes and checks every row" in report["warnings"][0]["message"]
    assert len(build_examples(path, tokenizer, max_length=64)) == 5  # training takes every row
    whole = validate_file(path, tokenizer, max_length=64)
    assert (whole["tokenized_rows"], whole["valid_rows"], whole["too_long"]) == (5, 5, 2)
    assert "Token counts" not in whole["summary"] and whole["warnings"][0]["row"] is None  # the too-long one


def test_the_budget_counts_characters_rendered_and_tokenized(tokenizer, tmp_path):
    rows = [{"instruction": f"Question {n}?", "output": f"Answer {n}."} for n in range(6)]
    text = tokenizer.apply_chat_template(to_messages("alpaca", rows[0]), tokenize=False)
    # A single-turn row: written twice by the chat template (the conversation, the prompt before the reply) and
    # tokenized once; the budget is checked before each row, so the row that passes it is the last one tokenized.
    report = validate_file(write_jsonl(tmp_path / "c.jsonl", rows), tokenizer, 128,
                           budget=TokenBudget(chars=3 * len(text) + 1))
    assert (report["tokenized_rows"], report["valid_rows"]) == (2, 6)
