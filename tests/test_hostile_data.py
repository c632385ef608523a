"""Hostile uploads: files that are small on disk but huge once read are refused, naming the limit, before they
expand (issue 19, finding 3). Memory is measured, not time: tracemalloc's peak of Python allocations during the
call, and the process's resident memory after it (Arrow allocates outside tracemalloc's view)."""

from __future__ import annotations

import functools
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from transformers import AutoTokenizer

from llama_space.data import build_examples, load_conversations, validate_file
from llama_space.data.formats import read_records
from llama_space.data.limits import MAX_ROWS, MAX_TOKENIZED_CHARS, MAX_TURNS
from llama_space.errors import UserError
from llama_space.service.eval_data import from_prompts_file
from llama_space.settings import Settings

from apputil import launched_app

PEAK_LIMIT = 32 * 2**20  # Python allocations while refusing: the bombs below expand to gigabytes
RSS_LIMIT = 256 * 2**20  # resident memory the process may keep after refusing
ROW_LIMIT = r"rows of at most 512 KiB are read\. Shorten or split that row"
GOOD = {"instruction": "Say hi.", "output": "Hi!"}
SECRET = "canary-51e2: the server's own files"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def parquet_bomb(tmp_path_factory) -> Path:
    """Under a kilobyte on disk: 1200 rows whose instruction and output are one dictionary-encoded 1 MB value."""
    value = pa.DictionaryArray.from_arrays(pa.array([0] * 1200, pa.int32()), pa.array(["a" * 2**20]))
    path = tmp_path_factory.mktemp("bomb") / "bomb.parquet"
    pq.write_table(pa.table({"instruction": value, "output": value}), path, compression="zstd",
                   compression_level=22)
    assert path.stat().st_size < 1024
    return path


@pytest.fixture(scope="module")
def one_row_jsonl(tmp_path_factory) -> Path:
    """One JSON line with a 4 MB answer."""
    path = tmp_path_factory.mktemp("one-row") / "one-row.jsonl"
    path.write_text(json.dumps({"instruction": "Summarize.", "output": "word " * (2**22 // 5)}) + "\n")
    return path


def refused_within_bounds(call: Callable[[], object], message: str, errors=(UserError,)) -> str:
    """Run `call`, which must raise one of `errors` matching `message`, with Python allocations under PEAK_LIMIT
    and the process's resident memory growing by less than RSS_LIMIT; returns the error text."""
    process = psutil.Process()
    before = process.memory_info().rss
    tracemalloc.start()
    try:
        with pytest.raises(errors, match=message) as caught:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = process.memory_info().rss - before
    assert peak < PEAK_LIMIT, f"{peak / 2**20:.0f} MiB of Python allocations while refusing"
    assert grown < RSS_LIMIT, f"resident memory grew by {grown / 2**20:.0f} MiB"
    return str(caught.value)


def test_a_dictionary_encoded_parquet_bomb_is_refused_before_it_expands(parquet_bomb, tokenizer):
    text = refused_within_bounds(lambda: validate_file(parquet_bomb, tokenizer, 384), ROW_LIMIT)
    assert "bomb.parquet: row 1 is over 512 KiB" in text
    refused_within_bounds(lambda: read_records(parquet_bomb), ROW_LIMIT)


def test_a_parquet_row_of_many_empty_turns_is_refused_before_it_becomes_objects(tmp_path):
    # 300,000 turns with null role and content: a few KB on disk, 300,000 dicts (about 70 MB) in Python.
    turns = pa.StructArray.from_arrays([pa.nulls(300_000, pa.string())] * 2, names=["role", "content"])
    path = tmp_path / "turns.parquet"
    pq.write_table(pa.table({"messages": pa.ListArray.from_arrays(pa.array([0, 300_000], pa.int32()), turns)}),
                   path)
    assert path.stat().st_size < 64 * 2**10
    assert "turns.parquet: row 1 is over 512 KiB" in refused_within_bounds(lambda: read_records(path), ROW_LIMIT)


def test_a_huge_jsonl_line_is_refused_before_it_is_parsed_or_tokenized(one_row_jsonl, tokenizer):
    text = refused_within_bounds(lambda: validate_file(one_row_jsonl, tokenizer, 384), ROW_LIMIT)
    assert "one-row.jsonl: line 1 is over 512 KiB" in text


def test_a_huge_json_array_item_and_csv_row_are_refused(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps([GOOD, {"instruction": "Hi", "output": [[]] * 2**20}]))
    assert "item 2 is over 512 KiB" in refused_within_bounds(lambda: load_conversations(array), ROW_LIMIT)
    table = tmp_path / "table.csv"
    cell = '"' + ("a" * 99 + "\n") * 1000 + '"'  # 100,000 characters over 1000 lines
    table.write_text("instruction,output\nHi,Hello\n" + ",".join([cell] * 6) + "\n")
    text = refused_within_bounds(lambda: load_conversations(table), ROW_LIMIT)
    assert "the row starting on line 3 is over 512 KiB" in text
    table.write_text('instruction,output\nHi,Hello\nHi,"' + "a\n" * 2**17 + '"\n')
    refused_within_bounds(lambda: load_conversations(table), "a cell of the row starting on line 3 is over 131,072 "
                                                             "characters, the most a CSV cell may hold here")


def test_parquet_that_decompresses_past_the_upload_limit_is_refused(tmp_path, monkeypatch):
    # 5000 rows of one dictionary-encoded 400-byte value: 2 MB of text from a file of a few hundred bytes.
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"instruction": pa.array(["q" * 400] * 5000).dictionary_encode(),
                             "output": pa.array(["a"] * 5000)}), path)
    refused_within_bounds(lambda: read_records(path, max_bytes=2**20),
                          r"decompresses to more than 1 MiB of data; at most 1 MiB \(the upload size limit\)")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"instruction": ["q" * 400] * 5000, "output": ["a"] * 5000}), plain,
                   use_dictionary=False, compression="zstd")
    monkeypatch.setattr(pq, "ParquetFile", None)  # refused from the metadata: no data page may be read
    with pytest.raises(UserError, match=r"decompresses to more than 1 MiB of data; at most"):
        read_records(plain, max_bytes=2**20)


def test_too_many_rows_and_columns_name_the_limit(tmp_path):
    many = tmp_path / "many.parquet"
    pq.write_table(pa.table({"instruction": pa.array(["q"] * (MAX_ROWS + 1)).dictionary_encode()}), many)
    refused_within_bounds(lambda: read_records(many), r"has 200,001 rows; at most 200,000 rows are read\. Split it")
    lines = tmp_path / "many.jsonl"
    lines.write_text('{"instruction": "q", "output": "a"}\n' * (MAX_ROWS + 1))
    with pytest.raises(UserError, match=r"has more than 200,000 rows; at most 200,000 rows are read"):
        read_records(lines)
    wide = tmp_path / "wide.jsonl"
    wide.write_text(json.dumps({**GOOD, **{f"c{i}": "" for i in range(200)}}) + "\n")
    with pytest.raises(UserError, match=r"has 202 columns; at most 100 are read"):
        read_records(wide)


def test_a_conversation_with_too_many_turns_is_a_row_error(tokenizer, tmp_path):
    turns = [{"role": role, "content": "x"} for _ in range(MAX_TURNS) for role in ("user", "assistant")]
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n" + json.dumps({"messages": turns[:2]}) + "\n")
    report = validate_file(path, tokenizer, 384)
    assert report["valid_rows"] == 1
    assert report["errors"] == [{"row": 1, "message": f"'messages' has {2 * MAX_TURNS} turns; conversations of at "
                                                      f"most {MAX_TURNS} turns are read: split it into shorter "
                                                      "conversations"}]


def test_validation_holds_only_the_preview_rows_of_a_large_file(tokenizer, tmp_path):
    # 500 distinct rows of about 1 KB: before, every row's tokens and offsets stayed in memory to the end
    # (20 MiB here; a few GiB for a 50 MB file), now the three preview rows do.
    path = tmp_path / "large.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Question {n}: " + "why " * 120,
                                        "output": f"Answer {n}: " + "because " * 80}) + "\n" for n in range(500)))
    tracemalloc.start()
    try:
        report = validate_file(path, tokenizer, 384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["valid_rows"] == 500 and len(report["preview"]) == 3
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB of Python allocations for a 0.5 MB file"


def test_validation_work_is_bounded_per_row_and_per_file(tokenizer, tmp_path, monkeypatch):
    # 60 conversations of MAX_TURNS turns (5 MB): before, each took ~0.8 s here, rendering about 33,000 messages as
    # its replies' prefixes; now each renders its turns about twice, and tokenizing stops past the budget.
    turns = [{"role": role, "content": f"{role} {n}: " + "words " * 50} for n in range(MAX_TURNS // 2)
             for role in ("user", "assistant")]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Row {row}."}, *turns[1:]]}) + "\n"
                            for row in range(60)))
    render = tokenizer.apply_chat_template
    rendered = {"messages": 0, "characters": 0}

    def counted(messages, **kwargs):
        text = render(messages, **kwargs)
        rendered["messages"] += len(messages)
        rendered["characters"] += len(text)
        return text

    monkeypatch.setattr(tokenizer, "apply_chat_template", counted)
    report = validate_file(path, tokenizer, 384)
    assert report["valid_rows"] == report["rows"] == 60 and report["error_count"] == 0
    assert 1 <= report["tokenized_rows"] < 60
    assert "Token counts are from rows 1-" in report["summary"]
    assert rendered["messages"] <= report["tokenized_rows"] * (2 * MAX_TURNS + 3)
    row_text = len(render([{"role": "user", "content": "Row 0."}, *turns[1:]], tokenize=False))
    assert rendered["characters"] <= MAX_TOKENIZED_CHARS + 3 * row_text


def test_a_lone_surrogate_is_a_row_error_not_a_crash(tokenizer, tmp_path):
    # JSON may escape half a UTF-16 pair ("\ud800"); no encoding or tokenizer takes it, and it failed the whole file.
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"instruction": "Hi \\ud800", "output": "Hello"}\n' + json.dumps(GOOD) + "\n")
    report = validate_file(path, tokenizer, 384)
    assert report["valid_rows"] == 1
    assert report["errors"] == [{"row": 1, "message": "turn 1: holds a lone surrogate (a \\ud800-\\udfff escape), "
                                                      "which is not text"}]
    assert len(build_examples(path, tokenizer, 384)) == 1
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi \\udfff"}\n{"prompt": "Hi", "reference": "\\ud83d"}\n{"prompt": "Hi"}\n')
    found = from_prompts_file(prompts, 2**20)
    assert (len(found.rows), found.skipped) == (1, 2)


def test_the_validate_dataset_endpoint_refuses_the_bombs_and_loader_names(tiny_model_dir, tmp_path, monkeypatch,
                                                                          parquet_bomb, one_row_jsonl):
    settings = Settings(model=str(tiny_model_dir), adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data")
    fine = tmp_path / "fine.jsonl"
    fine.write_text(json.dumps(GOOD) + "\n")
    with launched_app(settings) as app:
        client = Client(app.url, verbose=False)
        for bomb in (parquet_bomb, one_row_jsonl):
            upload = functools.partial(client.predict, handle_file(str(bomb)), api_name="/validate_dataset")
            text = refused_within_bounds(upload, ROW_LIMIT, errors=(AppError,))
            assert bomb.name in text and str(bomb.parent) not in text
        assert client.predict(handle_file(str(fine)), api_name="/validate_dataset")["ok"]
        # Finding 7 through the same surface: "json" would read the train/ folder of the server's working directory.
        (tmp_path / "train").mkdir()
        (tmp_path / "train" / "secret.json").write_text(json.dumps({"instruction": SECRET, "output": SECRET}) + "\n")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(AppError, match="dataset_id must be a Hub dataset id such as 'owner/name'") as caught:
            client.predict(file=None, dataset_id="json", api_name="/validate_dataset")
        assert SECRET not in str(caught.value)
