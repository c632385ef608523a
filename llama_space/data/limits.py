"""How much reading an uploaded data file may take, and the refusals that name each limit.

Anyone who may open the app can validate a file, so what a file expands to is bounded, not only its size
(an 819-byte Parquet file held 1200 copies of one compressed 1 MB value; a 40 MB one-line JSONL file cost 48 s
and 5 GiB to tokenize). Each limit is checked before the data it guards becomes Python objects or is
tokenized, and a file over one is refused with a UserError that names the limit and says what to do:

- data: at most the upload size limit (`max_bytes`, `--max-upload-mb`, 50 MiB by default) however it is
  stored: the file's size for JSON, JSONL and CSV; for Parquet, its decompressed size (from its metadata,
  before reading) and then the text it decodes to (per batch, before the batch becomes Python objects);
- rows: at most MAX_ROWS. 50 MiB of real instruction data holds roughly 25,000-150,000 rows (Alpaca's
  52,000 rows take 22 MB as JSON), so only files of very short rows come near it;
- row size: at most MAX_ROW_BYTES of UTF-8 text per row (a JSONL line, a JSON array item, a CSV record; a
  Parquet row as the JSON text it stands for): about 128k tokens of English, the longest max_length a job
  takes, where real instruction rows are a few KB;
- columns: at most MAX_COLUMNS (Parquet counts each nested field); a CSV cell holds at most 131,072 characters
  (Python's csv reader);
- turns: at most MAX_TURNS per conversation; a longer conversation is a row error (the row is skipped).
  Masking renders a conversation about three times (data/tokenize.py), but a template whose text around
  replies differs every time is rendered up to each reply, which grows with the square of the turns.

Validation (not training) also bounds its tokenizing, the costly part of checking a row (0.4-1 ms for a
short row on 2 CPU cores, 2 s per MB of text): every row is read and checked for format, but the usable rows
are rendered and tokenized only until a TokenBudget runs out, MAX_TOKENIZED_ROWS rows or MAX_TOKENIZED_CHARS
characters written by the chat template plus characters tokenized, whichever comes first (checked before each
row, so one row more at most). The report's token counts (too_long, no_trainable, trainable_tokens,
token_stats) then come from those first rows, and it says so; the rows after them count as trained.
Training tokenizes and checks every row: it runs in its own process, not in an anonymous request. So one
validation costs at most a few seconds of tokenizing (5,000 short rows, or 4 million characters of long ones,
take 2-5 s on 2 CPU cores) plus reading the file (200,000 short rows take 7-15 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llama_space.errors import UserError

MAX_ROWS = 200_000
MAX_ROW_BYTES = 512 * 2**10
MAX_COLUMNS = 100
MAX_TURNS = 256
MAX_TOKENIZED_ROWS = 5_000
MAX_TOKENIZED_CHARS = 4_000_000
SPLIT = "Split it into several files or remove rows."


def human(size: float) -> str:
    """A byte count for people: "2 KiB", "1.5 MiB"."""
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.4g} {unit}"
        size /= 1024
    return f"{size:.4g} GiB"


def checked_size(path: Path, max_bytes: int) -> None:
    """Refuse a missing, empty or oversize file before reading a byte of it."""
    if not path.is_file():
        raise UserError(f"{path.name}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path.name} is empty. Upload a file with at least one training row.")
    if size > max_bytes:
        raise UserError(f"{path.name} is {human(size)}, over the {human(max_bytes)} limit. {SPLIT}")


def count_row(name: str, count: int, known_total: int | None = None) -> None:
    """Refuse the file once its row `count` (or its `known_total`) passes MAX_ROWS."""
    total = known_total if known_total is not None else count
    if total > MAX_ROWS:
        has = f"has {total:,} rows" if known_total is not None else f"has more than {MAX_ROWS:,} rows"
        raise UserError(f"{name} {has}; at most {MAX_ROWS:,} rows are read. {SPLIT}")


def check_row_size(name: str, where: str, size: int) -> None:
    """Refuse the file when one row (`where`, e.g. "line 7") holds more than MAX_ROW_BYTES of text."""
    if size > MAX_ROW_BYTES:
        raise UserError(f"{name}: {where} is over {human(MAX_ROW_BYTES)}; rows of at most {human(MAX_ROW_BYTES)} "
                        "are read. Shorten or split that row, or remove it.")


def check_columns(name: str, count: int) -> None:
    """Refuse data with more than MAX_COLUMNS columns."""
    if count > MAX_COLUMNS:
        raise UserError(f"{name} has {count:,} columns; at most {MAX_COLUMNS} are read. Keep only the columns "
                        "of the training data (e.g. instruction, input, output or messages).")


def check_decoded(name: str, size: int, max_bytes: int) -> None:
    """Refuse data that decompresses or decodes to more than `max_bytes` (the upload size limit)."""
    if size > max_bytes:
        raise UserError(f"{name} decompresses to more than {human(max_bytes)} of data; at most {human(max_bytes)} "
                        f"(the upload size limit) is read. {SPLIT}")


@dataclass(frozen=True)
class TokenBudget:
    """How much of a file validation tokenizes: rows, and characters the chat template wrote plus characters
    tokenized (each row's text is written at least twice and tokenized once); whichever runs out first."""

    rows: int = MAX_TOKENIZED_ROWS
    chars: int = MAX_TOKENIZED_CHARS

    def spent(self, rows: int, chars: int) -> bool:
        """Whether `rows` rows and `chars` characters of work use the budget up."""
        return rows >= self.rows or chars >= self.chars


VALIDATION_BUDGET = TokenBudget()
