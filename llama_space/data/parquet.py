"""Reading a Parquet upload within the limits of data/limits.py, without letting it expand first.

Parquet compresses, run-length- and dictionary-encodes, so a file of a few hundred bytes can decode to
gigabytes (one 1 MB value stored once and referenced by every row). Its metadata is checked first (rows,
columns, the decompressed size of every column chunk); text columns are then read as Arrow dictionaries,
which stay the size they have in the file. Each row of a batch is measured from Arrow lengths as the JSON
text it stands for (so a row of a Parquet file meets the same limits as that row in a JSON Lines file), and
the batch becomes Python objects a slice of about CHUNK_BYTES at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.data.limits import MAX_ROW_BYTES, check_columns, check_decoded, check_row_size, count_row
from llama_space.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

BATCH_ROWS = 1024
CHUNK_BYTES = 2**20  # JSON-equivalent bytes of rows turned into Python objects at once
VALUE_BYTES = 3  # the least JSON text a value stands for: two quotes or brackets (or a digit) and a comma
# Bytes one value of a Parquet physical type takes once decoded; a BYTE_ARRAY's text is in the chunk's
# uncompressed size, its Arrow offset is 4 bytes (a FIXED_LEN_BYTE_ARRAY has its own length).
PHYSICAL_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8, "BYTE_ARRAY": 4}


def unreadable(path: Path, exc: BaseException) -> UserError:
    """A UserError for a file Arrow cannot read, with the first line of Arrow's reason."""
    reason = str(exc).strip().splitlines()[0][:300].rstrip(".") if str(exc).strip() else type(exc).__name__
    return UserError(f"{path.name} could not be read as PARQUET: {reason}. Check the file is a valid "
                     f"{path.suffix} file.")


def _check_metadata(path: Path, metadata: pq.FileMetaData, max_bytes: int) -> None:
    """Refuse on rows, columns and decompressed size before any data page is read."""
    count_row(path.name, metadata.num_rows, known_total=metadata.num_rows)
    check_columns(path.name, metadata.num_columns)
    schema = metadata.schema
    widths = [max(PHYSICAL_WIDTH.get(schema.column(i).physical_type) or schema.column(i).length, VALUE_BYTES)
              for i in range(metadata.num_columns)]
    decoded = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for column, width in enumerate(widths):
            chunk = row_group.column(column)
            # Run-length and dictionary encoding can make num_values far larger than the stored bytes.
            decoded += max(chunk.total_uncompressed_size, chunk.num_values * width)
    check_decoded(path.name, decoded, max_bytes)


def _list_sizes(array: pa.Array) -> np.ndarray:
    """Per-list sizes of a (large) list or map array: its values' sizes summed between its offsets."""
    import numpy as np

    offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)  # absolute into array.values
    values = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    running = np.concatenate([[0], np.cumsum(value_sizes(values))])
    return np.diff(running[offsets - offsets[0]])


def value_sizes(array: pa.Array) -> np.ndarray:
    """The JSON text each value of `array` stands for, in bytes (strings in full, dictionaries expanded)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        sizes = pa.array(value_sizes(array.dictionary), pa.int64())
        return pc.take(sizes, array.indices).fill_null(VALUE_BYTES).to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64) + VALUE_BYTES
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        return _list_sizes(array) + VALUE_BYTES
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        values = array.values.slice(array.offset * size, len(array) * size)
        return value_sizes(values).reshape(len(array), size).sum(axis=1) + VALUE_BYTES
    if pa.types.is_struct(kind):
        keys = sum(len(kind.field(i).name.encode()) + VALUE_BYTES for i in range(kind.num_fields))
        return sum((value_sizes(field) for field in array.flatten()), np.full(len(array), keys + VALUE_BYTES))
    try:
        width = max(kind.bit_width // 8, 1)
    except ValueError:  # no fixed width (e.g. a union): spread the array's buffers over its values
        width = array.nbytes // max(len(array), 1)
    return np.full(len(array), width + VALUE_BYTES, np.int64)


def _python_rows(batch: pa.RecordBatch, sizes: np.ndarray) -> Iterator[dict]:
    """The batch's rows as dicts, converted a slice of about CHUNK_BYTES at a time."""
    start, gathered = 0, 0
    for end, size in enumerate(sizes.tolist(), 1):
        gathered += size
        if gathered >= CHUNK_BYTES or end == len(sizes):
            yield from batch.slice(start, end - start).to_pylist()
            start, gathered = end, 0


def parquet_rows(path: Path, max_bytes: int) -> Iterator[dict]:
    """The rows of a Parquet file, a batch at a time, each batch measured before it becomes Python objects."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        _check_metadata(path, metadata, max_bytes)
        text_columns = [metadata.schema.column(i).path for i in range(metadata.num_columns)
                        if metadata.schema.column(i).physical_type == "BYTE_ARRAY"]
        batches = pq.ParquetFile(path, read_dictionary=text_columns).iter_batches(batch_size=BATCH_ROWS)
        decoded, number = 0, 0
        for batch in batches:
            keys = sum(len(name.encode()) + VALUE_BYTES for name in batch.schema.names)  # {"name": ..., }
            sizes = sum((value_sizes(column) for column in batch.columns), np.full(batch.num_rows, 2 + keys))
            over = np.flatnonzero(sizes > MAX_ROW_BYTES)
            if over.size:
                check_row_size(path.name, f"row {number + int(over[0]) + 1}", int(sizes[over[0]]))
            decoded += int(sizes.sum())
            check_decoded(path.name, decoded, max_bytes)
            number += batch.num_rows
            yield from _python_rows(batch, sizes)
    except (pa.ArrowException, OSError) as exc:  # a damaged or mislabelled file becomes a message
        raise unreadable(path, exc) from None
