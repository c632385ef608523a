"""Reading an uploaded data file and normalizing its rows (Alpaca, chat messages, ShareGPT) to messages.

Files are read row by row within the limits of data/limits.py (rows, row size, columns, decoded size).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llama_space.data.limits import MAX_TURNS, check_columns, checked_size, count_row
from llama_space.data.parquet import parquet_rows
from llama_space.data.readers import JSON_SHAPE, csv_rows, json_rows
from llama_space.errors import UserError

DEFAULT_MAX_BYTES = 50 * 2**20
LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
EXPECTED = {
    "alpaca": "instruction, output (optional: input, system)",
    "chat": "messages = a list of {role, content} with roles system/user/assistant",
    "sharegpt": "conversations = a list of {from, value} with from human/gpt/system (or user/assistant)",
}
CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {**CHAT_ROLES, "human": "user", "gpt": "assistant"}
TEXT_READERS = {"json": json_rows, "csv": csv_rows}
NO_ROWS = {"json": f"holds no rows. The file must be {JSON_SHAPE}.",
           "csv": "holds no rows under its header. Add at least one training example.",
           "parquet": "holds no rows. Add at least one training example."}


class RowError(ValueError):
    """A problem with one row; the row is reported and skipped."""


def dataset_fingerprint(path: str | Path) -> str:
    """Short sha256 of the file's bytes: identifies the exact data a job trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class Records:
    """A file being read: which loader reads it, its columns, and its rows as dicts, read as they are taken."""

    loader: str  # "json", "csv" or "parquet"
    columns: list[str]  # every column any row has, in first-seen order
    rows: Iterator[dict]  # a row may leave out a column; a limit passed raises UserError where reading gets to it


def _counted(name: str, rows: Iterator[dict]) -> Iterator[dict]:
    for count, row in enumerate(rows, 1):
        count_row(name, count)
        yield row


def _json_columns(path: Path) -> list[str]:
    """Every key of any row (a row may leave out an optional one), from a first pass over the file that also
    meets every limit and syntax error before a row is used."""
    columns: dict[str, None] = {}
    for row in _counted(path.name, json_rows(path)):
        columns.update(dict.fromkeys(row))
        check_columns(path.name, len(columns))
    return list(columns)


def open_records(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Records:
    """The file's loader, columns and rows; an unsupported, oversize or empty file is refused at once."""
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UserError(f"{path.name}: unsupported file type {path.suffix or '(none)'!r}. "
                        f"Upload one of: {', '.join(LOADERS)}.")
    checked_size(path, max_bytes)
    columns = _json_columns(path) if loader == "json" else None
    rows = parquet_rows(path, max_bytes) if loader == "parquet" else TEXT_READERS[loader](path)
    first = next(rows, None)
    if first is None:
        raise UserError(f"{path.name} {NO_ROWS[loader]}")
    return Records(loader, columns or list(first), _counted(path.name, itertools.chain([first], rows)))


def read_records(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, list[dict]]:
    """The file's rows as dicts with every column (None where a row has none), and which loader read them."""
    records = open_records(path, max_bytes)
    return records.loader, [{column: row.get(column) for column in records.columns} for row in records.rows]


def detect_format(columns: list[str]) -> str:
    """The row format implied by the columns: "chat", "sharegpt" or "alpaca"."""
    present = set(columns)
    if "messages" in present:
        return "chat"
    if "conversations" in present:
        return "sharegpt"
    if {"instruction", "output"} <= present:
        return "alpaca"
    if {"chosen", "rejected"} <= present:
        raise UserError("This file holds preference data (chosen and rejected replies), which sft does not train on: "
                        "set method to dpo or orpo.")
    expected = "; ".join(f"{name}: {columns_}" for name, columns_ in EXPECTED.items())
    raise UserError(f"Unknown data format: found columns [{', '.join(map(str, columns))}]. "
                    f"Expected one of these column sets: {expected}.")


def _text(record: dict, field: str, required: bool = False) -> str:
    value = record.get(field)
    if value is None:
        if required:
            raise RowError(f"'{field}' is missing")
        return ""
    if not isinstance(value, str):
        raise RowError(f"'{field}' must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"'{field}' is empty")
    return value


def _alpaca(record: dict) -> list[dict]:
    instruction = _text(record, "instruction", required=True)
    extra, system = _text(record, "input"), _text(record, "system")
    output = _text(record, "output", required=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _turns(turns: object, field: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise RowError(f"'{field}' must be a non-empty list of turns")
    if len(turns) > MAX_TURNS:
        raise RowError(f"'{field}' has {len(turns)} turns; conversations of at most {MAX_TURNS} turns are read: "
                       "split it into shorter conversations")
    messages = []
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {n} of '{field}' must be an object with '{role_key}' and '{text_key}'")
        role, content = turn.get(role_key), turn.get(text_key)
        if not isinstance(role, str) or role not in roles:
            raise RowError(f"turn {n}: {role_key} {role!r} is not one of {', '.join(roles)}")
        if not isinstance(content, str):
            got = "is missing" if content is None else f"must be text, got {type(content).__name__}"
            raise RowError(f"turn {n}: '{text_key}' {got}")
        messages.append({"role": roles[role], "content": content})
    return messages


def to_messages(data_format: str, record: dict) -> list[dict]:
    """One row as a list of {role, content} messages; raises RowError when a field is missing or mistyped."""
    if data_format == "alpaca":
        return _alpaca(record)
    if data_format == "chat":
        return _turns(record.get("messages"), "messages", "role", "content", CHAT_ROLES)
    return _turns(record.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)


def with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    """`messages` with `system_prompt` first when they have no system message of their own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
