"""Per-row checks of an uploaded file, the validation report, and the training rows built from it."""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.data.formats import (
    DEFAULT_MAX_BYTES,
    RowError,
    dataset_fingerprint,
    detect_format,
    open_records,
    to_messages,
    with_system_prompt,
)
from llama_space.data.limits import VALIDATION_BUDGET, TokenBudget
from llama_space.data.preview import preview_html
from llama_space.data.spreadsheet import runs_as_formula
from llama_space.data.tokenize import IGNORE_INDEX, Encoded, Masker
from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_LISTED = 50  # errors/warnings listed in a report; the counts cover all of them
_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE = "holds a lone surrogate (a \\ud800-\\udfff escape), which is not text"


@dataclass
class Scan:
    """A file's rows after format detection and per-row checks, before tokenization."""

    data_format: str
    total: int = 0
    rows: list[tuple[int, list[dict]]] = field(default_factory=list)  # (1-based row, messages) to train
    errors: list[dict] = field(default_factory=list)  # {"row", "message"}; these rows are skipped
    warnings: list[dict] = field(default_factory=list)  # {"row", "message"}; row None = whole file
    duplicates: int = 0


@dataclass
class Analysis:
    """A scan plus tokenization: which rows train, which are truncated or left without a trained token."""

    scan: Scan
    kept: list[Encoded] = field(default_factory=list)  # rows that train, in file order (the first `keep` of them)
    trained: int = 0  # tokenized rows that train
    trainable_tokens: int = 0  # tokens with a loss, after truncation to max_length
    lengths: list[int] = field(default_factory=list)  # full token length of every row that rendered
    tokenized: int = 0  # usable rows tokenized: the rows the token counts above and below cover
    tokenized_through: int = 0  # the row number of the last of them
    untokenized: int = 0  # usable rows past the token budget: checked for format only, counted as training
    too_long: list[int] = field(default_factory=list)  # row numbers longer than max_length
    no_trainable: list[int] = field(default_factory=list)  # row numbers with no assistant token within max_length


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds half a UTF-16 pair (JSON's "\\ud800" escape), which no encoding or tokenizer takes."""
    return _SURROGATE.search(text) is not None


def check_conversation(messages: list[dict]) -> None:
    """Raise RowError unless the conversation is trainable: user first, system only first, real replies."""
    roles = [message["role"] for message in messages]
    if "system" in roles[1:]:
        raise RowError(f"turn {roles.index('system', 1) + 1}: a system message may only come first")
    if roles[roles[0] == "system":][:1] != ["user"]:
        raise RowError("the conversation must start with a user turn (after an optional system message)")
    if "assistant" not in roles:
        raise RowError("the conversation has no assistant turn to learn from")
    for n, message in enumerate(messages, 1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise RowError(f"turn {n}: the assistant reply is empty")
        if has_lone_surrogate(message["content"]):
            raise RowError(f"turn {n}: {LONE_SURROGATE}")


def _formula_warning(record: dict) -> str | None:
    cells = [f"'{name}' starts with {value[0]!r}" for name, value in record.items()
             if runs_as_formula(value)]
    if not cells:
        return None
    return "; ".join(cells) + ": spreadsheet programs may run such a cell as a formula; check it is meant as text"


def _digest(messages: list[dict]) -> bytes:
    # Each content's length makes the joined text unambiguous; a third of the time of hashing the row's JSON.
    text = "\0".join(f"{message['role']}\0{len(message['content'])}\0{message['content']}" for message in messages)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _usable_rows(scan: Scan, loader: str, records: Iterator[dict]) -> Iterator[tuple[int, list[dict]]]:
    """(row number, messages) of each usable row as it is read; broken and duplicate rows go into `scan`."""
    # A digest per row, not the row, finds duplicates: the text is held once at most.
    first_seen: dict[bytes, int] = {}
    for number, record in enumerate(records, 1):
        scan.total = number
        if loader == "csv" and (warning := _formula_warning(record)):
            scan.warnings.append({"row": number, "message": warning})
        try:
            messages = to_messages(scan.data_format, record)
            check_conversation(messages)
        except RowError as exc:
            scan.errors.append({"row": number, "message": str(exc)})
            continue
        key = _digest(messages)
        if key in first_seen:
            scan.duplicates += 1
            scan.warnings.append({"row": number, "message": f"exact duplicate of row {first_seen[key]}; skipped"})
        else:
            first_seen[key] = number
            yield number, messages


def scan_rows(path: str | Path,
              max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Scan, Iterator[tuple[int, list[dict]]]]:
    """The scan of a file (format detected from its columns) and its usable rows, read as they are taken:
    the scan's counts, errors and warnings are complete once the rows are."""
    records = open_records(path, max_bytes)
    scan = Scan(detect_format(records.columns))
    return scan, _usable_rows(scan, records.loader, records.rows)


def scan_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Scan:
    """Read, detect the format, normalize each row and sort rows into usable, broken and duplicate."""
    scan, rows = scan_rows(path, max_bytes)
    scan.rows = list(rows)
    return scan


def _first_errors(scan: Scan, count: int = 3) -> str:
    return "; ".join(f"row {error['row']}: {error['message']}" for error in scan.errors[:count])


def load_conversations(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, list[list[dict]]]:
    """The file's format name and its usable rows as {role, content} message lists (broken/duplicate rows left out)."""
    scan = scan_file(path, max_bytes)
    if not scan.rows:
        raise UserError(f"None of the {scan.total} rows is usable: {_first_errors(scan)}.")
    return scan.data_format, [messages for _, messages in scan.rows]


def _trained_tokens(encoded: Encoded, max_length: int) -> int:
    return sum(label != IGNORE_INDEX for label in encoded.labels[:max_length])


def analyse(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
            max_bytes: int = DEFAULT_MAX_BYTES, keep: int | None = None, budget: TokenBudget | None = None,
            system_prompt: str = "") -> Analysis:
    """Scan the file and tokenize its usable rows with the model's chat template, a row at a time.

    keep: how many trained rows' encodings `kept` holds (None: all, and `scan.rows` holds every usable row);
    the counts cover every row either way, so a report holds no more than `keep` rows in memory.
    budget: how much to tokenize (None: every row, as training must); the usable rows after it are checked
    for format only and counted in `untokenized`.
    """
    if max_length < 1:
        raise UserError(f"max_length must be at least 1, got {max_length}")
    masker = Masker(tokenizer)
    scan, rows = scan_rows(path, max_bytes)
    analysis = Analysis(scan)
    for number, messages in rows:
        messages = with_system_prompt(messages, system_prompt)  # the job's prompt, for rows without their own
        if keep is None:
            scan.rows.append((number, messages))
        if budget is not None and budget.spent(analysis.tokenized, masker.work):
            analysis.untokenized += 1
            continue
        analysis.tokenized, analysis.tokenized_through = analysis.tokenized + 1, number
        try:
            encoded = masker.encode(messages)
        except UserError as exc:  # the template rejected this row, e.g. roles that do not alternate
            scan.errors.append({"row": number, "message": str(exc)})
            continue
        _count(analysis, number, encoded, max_length, keep)
    scan.errors.sort(key=lambda error: error["row"])
    scan.warnings.sort(key=lambda warning: warning["row"])
    return analysis


def _count(analysis: Analysis, number: int, encoded: Encoded, max_length: int, keep: int | None) -> None:
    """Add row `number`'s tokens to the analysis, keeping its encoding while fewer than `keep` are kept."""
    analysis.lengths.append(len(encoded.input_ids))
    if len(encoded.input_ids) > max_length:
        analysis.too_long.append(number)
    if trained := _trained_tokens(encoded, max_length):
        analysis.trained += 1
        analysis.trainable_tokens += trained
        if keep is None or len(analysis.kept) < keep:
            analysis.kept.append(encoded)
    else:
        analysis.no_trainable.append(number)
        analysis.scan.warnings.append({"row": number, "message": f"no assistant token within "
                                                                 f"max_length={max_length}; skipped"})


def _summary(analysis: Analysis, max_length: int) -> str:
    scan = analysis.scan
    reasons = [f"{count} {what}" for count, what in [
        (len(scan.errors), "with errors"), (scan.duplicates, "exact duplicates"),
        (len(analysis.no_trainable), f"with no assistant token within {max_length} tokens")] if count]
    training = analysis.trained + analysis.untokenized
    if not training:
        return (f"Nothing to train: none of the {scan.total} rows is usable ({', '.join(reasons)}). "
                "Fix the rows listed and upload the file again.")
    text = f"{training} of {scan.total} rows ({scan.data_format} format) will be trained"
    if reasons:
        text += f"; skipped: {', '.join(reasons)}"
    if analysis.too_long:
        text += f"; {len(analysis.too_long)} longer than {max_length} tokens are truncated"
    if analysis.untokenized:
        text += (f". Token counts are from rows 1-{analysis.tokenized_through} only: the other "
                 f"{analysis.untokenized} usable rows were checked for format, not tokenized")
    return text + "."


def _token_stats(lengths: list[int]) -> dict | None:
    if not lengths:
        return None
    ordered = sorted(lengths)
    return {"min": ordered[0], "median": statistics.median(ordered),
            "p95": ordered[math.ceil(0.95 * len(ordered)) - 1], "max": ordered[-1]}


def _row_list(rows: list[int], limit: int = 20) -> str:
    listed = ", ".join(map(str, rows[:limit]))
    return listed + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _budget_warning(analysis: Analysis, budget: TokenBudget) -> dict:
    return {"row": None, "message": (
        f"Token counts (token_stats, too_long, no_trainable, trainable_tokens) are from rows "
        f"1-{analysis.tokenized_through} only: validation tokenizes at most {budget.rows:,} rows or "
        f"{budget.chars:,} characters of chat-formatted text (rendered and tokenized). The other "
        f"{analysis.untokenized} usable rows were checked for format only and are counted as trained; training "
        "tokenizes and checks every row.")}


def validate_file(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
                  max_bytes: int = DEFAULT_MAX_BYTES, preview_rows: int = 3,
                  budget: TokenBudget = VALIDATION_BUDGET, system_prompt: str = "") -> dict:
    """JSON-able report on a training file; raises UserError only when the file as a whole is unusable.

    Every row is read and checked for format; the usable rows are tokenized within `budget` (see
    data/limits.py), in file order, and the token counts cover those rows.
    Keys: ok (at least one row will be trained), summary (one sentence for the user), format
    ("alpaca" | "chat" | "sharegpt"), fingerprint (dataset_fingerprint), rows (data rows in the file),
    valid_rows (rows that will be trained: the tokenized rows that train, plus the usable rows past the
    budget), skipped_rows, errors / warnings (up to MAX_LISTED of {"row", "message"}; row is the 1-based
    data row, a CSV header not counted, or None for the whole file; rows with errors are skipped),
    error_count / warning_count (totals), duplicates (exact repeats of an earlier row, skipped),
    tokenized_rows (usable rows tokenized: all of them unless the budget ran out, then the first ones, and
    a whole-file warning says so); of the tokenized rows: too_long (rows over max_length tokens, truncated),
    no_trainable (rows left without an assistant token by truncation, skipped), trainable_tokens (tokens
    with a loss after truncation), token_stats ({"min", "median", "p95", "max"} of full token lengths, or
    None); max_length, preview (HTML of the first `preview_rows` trained rows).
    """
    analysis = analyse(path, tokenizer, max_length, max_bytes, keep=preview_rows, budget=budget,
                       system_prompt=system_prompt)
    scan = analysis.scan
    warnings = list(scan.warnings)
    if analysis.too_long:
        warnings.insert(0, {"row": None, "message": f"{len(analysis.too_long)} rows are longer than "
                            f"max_length={max_length} tokens and are truncated: rows {_row_list(analysis.too_long)}"})
    if analysis.untokenized:
        warnings.insert(0, _budget_warning(analysis, budget))
    training = analysis.trained + analysis.untokenized
    return {
        "ok": bool(training),
        "summary": _summary(analysis, max_length),
        "format": scan.data_format,
        "fingerprint": dataset_fingerprint(path),
        "rows": scan.total,
        "valid_rows": training,
        "skipped_rows": scan.total - training,
        "errors": scan.errors[:MAX_LISTED],
        "error_count": len(scan.errors),
        "warnings": warnings[:MAX_LISTED],
        "warning_count": len(warnings),
        "duplicates": scan.duplicates,
        "tokenized_rows": analysis.tokenized,
        "too_long": len(analysis.too_long),
        "no_trainable": len(analysis.no_trainable),
        "max_length": max_length,
        "trainable_tokens": analysis.trainable_tokens,
        "token_stats": _token_stats(analysis.lengths),
        "preview": [preview_html(encoded, max_length) for encoded in analysis.kept],
    }


def build_examples(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
                   max_bytes: int = DEFAULT_MAX_BYTES, system_prompt: str = "") -> list[dict]:
    """Training rows {"input_ids", "labels"} of the file's valid rows (`system_prompt` given to those without one);
    UserError if nothing is trainable."""
    analysis = analyse(path, tokenizer, max_length, max_bytes, system_prompt=system_prompt)
    if not analysis.trained:
        details = f" First problems: {_first_errors(analysis.scan)}." if analysis.scan.errors else ""
        raise UserError(_summary(analysis, max_length) + details)
    return [{"input_ids": encoded.input_ids[:max_length], "labels": encoded.labels[:max_length]}
            for encoded in analysis.kept]
