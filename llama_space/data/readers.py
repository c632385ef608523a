"""Reading JSON, JSON Lines and CSV uploads row by row, within the limits of data/limits.py.

JSON Lines and CSV are read a line at a time (never more than MAX_ROW_BYTES of a line), so a huge line is
refused before it is decoded. A JSON array must be decoded from the whole text, which the upload size limit
bounds; its items are decoded one at a time in a window that grows to MAX_ROW_BYTES at most, so no item
expands into Python objects before its size is known.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from llama_space.data.limits import MAX_ROW_BYTES, check_columns, check_row_size
from llama_space.errors import UserError

JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
JSON_SHAPE = ('a JSON array of objects ([{"instruction": ..., "output": ...}, ...]) '
              "or JSON Lines (one object per line)")
FIRST_WINDOW = 4096  # characters of a JSON array item tried first; most rows are shorter
CUT_MARGIN = 16  # a decoding error this close to a window's end may just be the cut (e.g. "tr" of "true")
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _check_text_head(path: Path, head: bytes) -> None:
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{path.name} is UTF-16 text. Save it as UTF-8 and upload it again.")
    if b"\x00" in head[:8192]:
        raise UserError(f"{path.name} looks like a binary file, not text. Upload a UTF-8 "
                        f"{path.suffix} text file (or a .parquet file).")


def _not_utf8(path: Path, data: bytes, exc: UnicodeDecodeError, first_line: int) -> UserError:
    line = first_line + data[: exc.start].count(b"\n")
    return UserError(f"{path.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}). "
                     "Save it with UTF-8 encoding and upload it again.")


def whole_text(path: Path) -> str:
    """The file as text (its size already checked); refuses binary and non-UTF-8 files saying what to do."""
    data = path.read_bytes()
    _check_text_head(path, data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data, exc, 1) from exc


def text_lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, text with its line end, size in bytes) of each line; a line over MAX_ROW_BYTES is refused
    after reading just past the limit."""
    with path.open("rb") as handle:
        _check_text_head(path, handle.read(8192))
        handle.seek(0)
        number = 0
        while raw := handle.readline(MAX_ROW_BYTES + 1):
            number += 1
            if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                check_row_size(path.name, f"line {number}", len(raw))
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw, exc, number) from exc
            yield number, text, len(raw)


def _row_object(path: Path, value: object, where: str) -> dict:
    if not isinstance(value, dict):
        kind = JSON_TYPES.get(type(value), type(value).__name__)
        raise UserError(f"{path.name}: {where} is a JSON {kind}, not an object. The file must be {JSON_SHAPE}.")
    check_columns(f"{path.name}, {where},", len(value))
    return value


def _invalid(where: str, message: str, text: str, pos: int) -> UserError:
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return UserError(f"{where} is not valid JSON: {message} at line {line}, column {column}. "
                     f"The file must be {JSON_SHAPE}.")


def _too_deep(where: str) -> UserError:
    return UserError(f"{where} is nested too deeply to be training data. The file must be {JSON_SHAPE}.")


def jsonl_rows(path: Path) -> Iterator[dict]:
    """The objects of a JSON Lines file, one line at a time (blank lines skipped)."""
    first = True
    for number, line, _ in text_lines(path):
        if not line.strip():
            continue
        where = f"{path.name}, line {number},"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if first and line.lstrip().startswith("{") and exc.pos >= len(line.rstrip()):
                raise UserError(f"{path.name} holds a JSON object spread over several lines; JSON Lines needs "
                                "one object per line, and a single JSON object is not a list of rows. "
                                f"The file must be {JSON_SHAPE}.") from None
            raise _invalid(where, exc.msg, line, exc.pos) from None
        except RecursionError:
            raise _too_deep(where) from None
        first = False
        yield _row_object(path, value, f"line {number}")


def _array_item(path: Path, text: str, pos: int, number: int) -> tuple[object, int]:
    """The array item starting at `pos`, decoded in a window that doubles up to MAX_ROW_BYTES, and its end."""
    window = FIRST_WINDOW
    while True:
        part = text[pos: pos + window + 1]
        cut = pos + len(part) < len(text)
        try:
            value, end = _DECODER.raw_decode(part)
        except json.JSONDecodeError as exc:
            if not cut or (exc.pos < len(part) - CUT_MARGIN and not exc.msg.startswith("Unterminated")):
                raise _invalid(path.name, exc.msg, text, pos + exc.pos) from None
            if window >= MAX_ROW_BYTES:
                check_row_size(path.name, f"item {number}", len(part.encode("utf-8")))
            window = min(2 * window, MAX_ROW_BYTES)
            continue
        except RecursionError:
            raise _too_deep(path.name) from None
        check_row_size(path.name, f"item {number}", len(part[:end].encode("utf-8")))
        return value, pos + end


def json_array_rows(path: Path) -> Iterator[dict]:
    """The objects of a file holding one JSON array, decoded item by item."""
    text = whole_text(path)
    start = _SPACE.match(text).end()
    if not text.startswith("[", start):
        raise _invalid(path.name, "Expecting value", text, start)
    pos = _SPACE.match(text, start + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        for number in itertools.count(1):
            value, pos = _array_item(path, text, pos, number)
            yield _row_object(path, value, f"item {number}")
            pos = _SPACE.match(text, pos).end()
            if not text.startswith(",", pos):
                break
            pos = _SPACE.match(text, pos + 1).end()
        if not text.startswith("]", pos):
            raise _invalid(path.name, "Expecting ',' delimiter", text, pos)
        pos += 1
    if text[pos:].strip():
        raise _invalid(path.name, "Extra data", text, _SPACE.match(text, pos).end())


def json_rows(path: Path) -> Iterator[dict]:
    """The rows of a .json or .jsonl file: a JSON array, or JSON Lines."""
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return json_array_rows(path) if head.startswith(b"[") else jsonl_rows(path)


class _RecordLines:
    """A file's text lines for csv.reader, refusing a record over MAX_ROW_BYTES while it is read: csv asks for
    exactly one record's lines per row, and a quoted cell may carry a record on over many lines."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.lines = text_lines(path)
        self.size, self.first = 0, 0

    def new_record(self) -> None:
        self.size, self.first = 0, 0

    def __iter__(self) -> _RecordLines:
        return self

    def __next__(self) -> str:
        number, text, size = next(self.lines)
        self.size += size
        self.first = self.first or number
        check_row_size(self.name, f"the row starting on line {self.first}", self.size)
        return text


def _csv_header(path: Path, reader) -> list[str]:
    header = next(reader, [])
    check_columns(path.name, len(header))
    if len(set(header)) != len(header):
        raise UserError(f"{path.name}: the CSV header repeats a column name ({', '.join(header)}).")
    return header


def csv_rows(path: Path) -> Iterator[dict]:
    """The data rows of a CSV file under its header: every cell as text, empty cells as "", blank lines skipped,
    missing trailing cells as None."""
    lines = _RecordLines(path)
    reader = csv.reader(lines)
    try:
        header = _csv_header(path, reader)
        lines.new_record()
        for record in reader:
            lines.new_record()
            if len(record) > len(header):
                raise UserError(f"{path.name} could not be read as CSV: Expected {len(header)} fields in line "
                                f"{reader.line_num}, saw {len(record)}. Check the file is a valid .csv file.")
            if record:
                yield dict(itertools.zip_longest(header, record))
    except csv.Error as exc:
        if str(exc).startswith("field larger than field limit"):
            raise UserError(f"{path.name}: a cell of the row starting on line {lines.first} is over "
                            f"{csv.field_size_limit():,} characters, the most a CSV cell may hold here. Shorten "
                            "or split it, or upload the data as JSON Lines.") from None
        raise UserError(f"{path.name} could not be read as CSV: {exc} (line {reader.line_num + 1}). "
                        "Check the file is a valid .csv file.") from None
