"""Reading an uploaded data file and normalizing its rows (Alpaca, chat messages, ShareGPT) to messages."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
from pathlib import Path

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
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
JSON_SHAPE = ('a JSON array of objects ([{"instruction": ..., "output": ...}, ...]) '
              "or JSON Lines (one object per line)")


class RowError(ValueError):
    """A problem with one row; the row is reported and skipped."""


def dataset_fingerprint(path: str | Path) -> str:
    """Short sha256 of the file's bytes: identifies the exact data a job trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.4g} {unit}"
        size /= 1024
    return f"{size:.4g} GiB"


def _checked_size(path: Path, max_bytes: int) -> None:
    if not path.is_file():
        raise UserError(f"{path.name}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path.name} is empty. Upload a file with at least one training row.")
    if size > max_bytes:
        raise UserError(f"{path.name} is {_human(size)}, over the {_human(max_bytes)} limit. "
                        "Split it or remove rows.")


def _decoded_text(path: Path) -> str:
    """The file as text; refuses binary and non-UTF-8 files with a message that says what to do."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{path.name} is UTF-16 text. Save it as UTF-8 and upload it again.")
    if b"\x00" in data[:8192]:
        raise UserError(f"{path.name} looks like a binary file, not text. Upload a UTF-8 "
                        f"{path.suffix} text file (or a .parquet file).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}). "
                        "Save it with UTF-8 encoding and upload it again.") from exc


def _parse_json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
                        f"The file must be {JSON_SHAPE}.") from exc
    except RecursionError as exc:
        raise UserError(f"{where} is nested too deeply to be training data. The file must be {JSON_SHAPE}.") from exc


def _check_json(path: Path, text: str) -> int:
    """Checks the JSON structure with precise positions (Arrow's errors have none); returns the row count."""
    if text.lstrip().startswith("{") and "\n" in text.strip():
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            pass  # not one object: JSON Lines, checked line by line below
        else:
            raise UserError(f"{path.name} holds a single JSON object, not a list of rows. "
                            f"The file must be {JSON_SHAPE}.")
    if text.lstrip().startswith("["):
        rows = list(enumerate(_parse_json(text, path.name), 1))
        unit = "item"
    else:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        rows = [(n, _parse_json(line, f"{path.name}, line {n},")) for n, line in lines]
        unit = "line"
    for n, row in rows:
        if not isinstance(row, dict):
            kind = JSON_TYPES.get(type(row), type(row).__name__)
            raise UserError(f"{path.name}: {unit} {n} is a JSON {kind}, not an object. "
                            f"The file must be {JSON_SHAPE}.")
    return len(rows)


def _csv_options(path: Path, text: str) -> dict:
    """Every CSV column read as text, empty cells as "" (pandas would guess numbers and NaN)."""
    from datasets import Features, Value

    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    if not any(row for row in reader):
        raise UserError(f"{path.name} holds no rows under its header. Add at least one training example.")
    if len(set(header)) != len(header):
        raise UserError(f"{path.name}: the CSV header repeats a column name ({', '.join(header)}).")
    return {"features": Features({name: Value("string") for name in header}),
            "keep_default_na": False, "na_filter": False}


def _load_with_datasets(path: Path, loader: str, options: dict) -> list[dict]:
    from datasets import load_dataset

    # A throwaway cache: nothing is written beside the user's file or into the shared HF cache.
    with tempfile.TemporaryDirectory(prefix="llama-space-data-") as cache_dir:
        try:
            dataset = load_dataset(loader, data_files=str(path), split="train", cache_dir=cache_dir, **options)
            return dataset.to_list()
        except Exception as exc:  # Arrow/pandas/parquet errors for a malformed file become a UserError
            root = exc
            while root.__cause__ or root.__context__:
                root = root.__cause__ or root.__context__
            reason = str(root).strip().splitlines()[0][:300].rstrip(".") if str(root).strip() else type(root).__name__
            raise UserError(f"{path.name} could not be read as {loader.upper()}: {reason}. "
                            f"Check the file is a valid {path.suffix} file.") from exc


def read_records(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, list[dict]]:
    """The file's rows as dicts, and which loader read them ("json", "csv" or "parquet")."""
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UserError(f"{path.name}: unsupported file type {path.suffix or '(none)'!r}. "
                        f"Upload one of: {', '.join(LOADERS)}.")
    _checked_size(path, max_bytes)
    options: dict = {}
    if loader != "parquet":
        text = _decoded_text(path)
        if loader == "json" and _check_json(path, text) == 0:
            raise UserError(f"{path.name} holds no rows. The file must be {JSON_SHAPE}.")
        if loader == "csv":
            options = _csv_options(path, text)
    records = _load_with_datasets(path, loader, options)
    if not records:
        raise UserError(f"{path.name} holds no rows. Add at least one training example.")
    return loader, records


def detect_format(columns: list[str]) -> str:
    """The row format implied by the columns: "chat", "sharegpt" or "alpaca"."""
    present = set(columns)
    if "messages" in present:
        return "chat"
    if "conversations" in present:
        return "sharegpt"
    if {"instruction", "output"} <= present:
        return "alpaca"
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
