"""Reading uploaded files: every supported format is detected and normalized; every bad file gets a clear UserError."""

from __future__ import annotations

import json
import random

import pytest

from llama_space.data import dataset_fingerprint, load_conversations
from llama_space.errors import UserError

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "Be terse."},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]
ALPACA_MESSAGES = [
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
     {"role": "assistant", "content": "5"}],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
]
CHAT = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                      {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                      {"role": "assistant", "content": "A2"}]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_alpaca_jsonl_maps_input_and_system(tmp_path):
    assert load_conversations(write_jsonl(tmp_path / "a.jsonl", ALPACA)) == ("alpaca", ALPACA_MESSAGES)


def test_alpaca_json_array(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA, indent=2), encoding="utf-8")
    assert load_conversations(path) == ("alpaca", ALPACA_MESSAGES)


def test_alpaca_csv_reads_every_cell_as_text(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('instruction,input,output\n"Say hi.",,Hi!\n"Two\nlines",x,42\n', encoding="utf-8")
    data_format, rows = load_conversations(path)
    assert data_format == "alpaca"
    assert rows == [
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        [{"role": "user", "content": "Two\nlines\n\nx"}, {"role": "assistant", "content": "42"}],
    ]


def test_alpaca_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "a.parquet"
    pd.DataFrame(ALPACA).to_parquet(path)
    assert load_conversations(path) == ("alpaca", ALPACA_MESSAGES)


def test_chat_messages(tmp_path):
    assert load_conversations(write_jsonl(tmp_path / "c.jsonl", CHAT)) == ("chat", [CHAT[0]["messages"]])


def test_sharegpt_maps_roles(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"},
                               {"from": "gpt", "value": "A1"}, {"from": "user", "value": "Q2"},
                               {"from": "assistant", "value": "A2"}]}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    assert load_conversations(path) == ("sharegpt", [CHAT[0]["messages"]])


def test_nothing_is_written_beside_the_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ALPACA)
    load_conversations(tmp_path / "a.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def test_fingerprint_follows_the_bytes(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    same = write_jsonl(tmp_path / "b.jsonl", ALPACA)
    other = write_jsonl(tmp_path / "c.jsonl", ALPACA[:1])
    assert dataset_fingerprint(first) == dataset_fingerprint(same) != dataset_fingerprint(other)
    assert len(dataset_fingerprint(first)) == 16


BAD_FILES = {
    "unparseable JSON": ("bad.json", b'[{"instruction": "a", "output": "b"},\n {"instruction": "a" "output": "b"}]',
                         r"not valid JSON: Expecting ',' delimiter at line 2"),
    "bad JSONL line": ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": \n',
                       r"bad\.jsonl, line 2, is not valid JSON"),
    "binary .json": ("img.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", r"looks like a binary file"),
    "non-UTF-8": ("latin.jsonl", '{"instruction": "café", "output": "x"}\n'.encode("latin-1"),
                  r"not UTF-8 text \(byte 0xe9 on line 1\)\. Save it with UTF-8"),
    "UTF-16": ("wide.csv", "instruction,output\nq,a\n".encode("utf-16"), r"UTF-16 text\. Save it as UTF-8"),
    "deeply nested": ("deep.json", b"[" * 100_000 + b"]" * 100_000, r"nested too deeply"),
    "empty": ("empty.jsonl", b"", r"empty\.jsonl is empty"),
    "empty array": ("none.json", b"[]", r"holds no rows"),
    "blank lines": ("blank.jsonl", b"\n  \n", r"holds no rows"),
    "header only": ("head.csv", b"instruction,output\n", r"holds no rows under its header"),
    "not objects": ("nums.json", b"[1, 2]", r"item 1 is a JSON number, not an object"),
    "one object": ("obj.json", b'{\n "instruction": "a",\n "output": "b"\n}\n', r"holds a JSON object spread over several lines"),
    "ragged CSV": ("r.csv", b"instruction,output\na,b\nc,d,e\n", r"could not be read as CSV: .*Expected 2 fields"),
    "fake parquet": ("x.parquet", b"not parquet at all", r"could not be read as PARQUET"),
    "wrong extension": ("data.txt", b"hello", (r"unsupported file type '\.txt'\. Upload one of: \.json, \.jsonl, "
                                              r"\.csv, \.parquet")),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gets_its_own_message(tmp_path, case):
    name, content, message = BAD_FILES[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_conversations(tmp_path / name)


def test_unknown_format_lists_expected_and_found_columns(tmp_path):
    with pytest.raises(UserError) as caught:
        load_conversations(write_jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}]))
    text = str(caught.value)
    assert "found columns [question, answer]" in text
    assert "instruction, output" in text and "messages" in text and "conversations" in text


def test_oversize_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"x" * 2048)  # not JSON at all: parsing it would give a different message
    with pytest.raises(UserError, match=r"big\.json is 2 KiB, over the 1 KiB limit\. Split it"):
        load_conversations(path, max_bytes=1024)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_conversations(tmp_path / "gone.jsonl")


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_random_junk_only_ever_raises_user_error(tmp_path, suffix):
    rng = random.Random(suffix)
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(8)]
    samples += [b'{"messages": [[[{"role": 1}]]]}\n', b'[{"instruction": [1], "output": {"a": null}}]',
                b"instruction,output\n\"unclosed,quote\n", b"[null]", b'"just a string"', b"{}\n{}\n"]
    for n, content in enumerate(samples):
        path = tmp_path / f"junk{n}{suffix}"
        path.write_bytes(content)
        with pytest.raises(UserError):
            load_conversations(path)
