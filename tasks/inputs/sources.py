"""The Parquet files of an input: one file, or a folder holding a (hive-partitioned) dataset.

:func:`list_source_files` lists an input's files (:class:`SourceFile`: path, row count, hive partition values,
integer-typed where every value is an integer, as pyarrow's own inference does) and :func:`iter_tables` streams
one file by record batches of the wanted columns, partition columns filled in, so memory does not grow with the
number of rows. A file that cannot be opened is a one-line :class:`InputError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError

#: Rows per record batch while scanning; bounds the memory of validation.
SCAN_BATCH_ROWS = 65_536

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INT = re.compile(r"^-?\d+$")

PartitionKeys = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class SourceFile:
    """One Parquet file of an input, with its row count and hive partition values."""

    path: str
    num_rows: int
    partition: PartitionKeys = ()


def list_source_files(path: Path, key: str) -> list[SourceFile]:
    """The Parquet files of an input (one file or a hive-partitioned folder), with row counts.

    ``key`` names the config key (``[data] decisions``) for messages.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found ({key})")
    if path.is_file():
        return [SourceFile(str(path), open_parquet(path).metadata.num_rows)]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(f"{path}: folder holds no Parquet files ({key})")
    raw = [_hive_keys(f.relative_to(path)) for f in files]
    numeric = _integer_partition_keys(raw)
    sources = []
    for file, keys in zip(files, raw, strict=True):
        typed = tuple((k, int(v) if (k in numeric and v is not None) else v) for k, v in keys)
        sources.append(SourceFile(str(file), open_parquet(file).metadata.num_rows, typed))
    return sources


def _hive_keys(relative: Path) -> list[tuple[str, str | None]]:
    keys = []
    for part in relative.parts[:-1]:
        if "=" in part:
            name, _, value = part.partition("=")
            value = unquote(value)
            keys.append((unquote(name), None if value == _HIVE_NULL else value))
    return keys


def _integer_partition_keys(raw: list[list[tuple[str, str | None]]]) -> set[str]:
    """Partition keys whose every value is an integer (pyarrow's hive inference does the same)."""
    values: dict[str, list[str | None]] = {}
    for keys in raw:
        for name, value in keys:
            values.setdefault(name, []).append(value)
    return {k for k, vs in values.items() if all(v is None or _INT.match(v) for v in vs)}


def open_parquet(path: Path | str) -> pq.ParquetFile:
    """The file opened for reading; not found or not Parquet is an :class:`InputError` naming it."""
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a readable Parquet file ({reason})") from None


def source_schema(source: SourceFile, handle: pq.ParquetFile) -> pa.Schema:
    """The file's Arrow schema plus its partition columns."""
    schema = handle.schema_arrow
    for name, value in source.partition:
        if name not in schema.names:
            schema = schema.append(pa.field(name, pa.int64() if isinstance(value, int) else pa.string()))
    return schema


def with_partition(batch: pa.RecordBatch | pa.Table, source: SourceFile, wanted: Sequence[str]) -> pa.Table:
    """``batch`` as a table, with the ``wanted`` partition columns the file does not hold appended."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    for name, value in source.partition:
        if name in wanted and name not in table.column_names:
            kind = pa.int64() if isinstance(value, int) else pa.string()
            table = table.append_column(name, pa.array([value] * table.num_rows, type=kind))
    return table


def physical_columns(columns: Sequence[str], handle: pq.ParquetFile) -> list[str]:
    """The ``columns`` the file itself holds (the others are partition columns, or missing)."""
    names = set(handle.schema_arrow.names)
    return [c for c in columns if c in names]


def iter_tables(source: SourceFile, columns: Sequence[str]) -> Iterator[tuple[int, pa.Table]]:
    """Yield (first row, table) of ``columns`` in record batches; partition columns are filled in."""
    handle = open_parquet(source.path)
    offset = 0
    physical = physical_columns(columns, handle)
    if not physical:  # only partition columns wanted: still need the row counts
        for group in range(handle.num_row_groups):
            rows = handle.metadata.row_group(group).num_rows
            table = with_partition(pa.table({"__rows__": pa.nulls(rows)}), source, columns)
            yield offset, table.drop_columns(["__rows__"])
            offset += rows
        return
    for batch in handle.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=physical, use_threads=False):
        yield offset, with_partition(batch, source, columns)
        offset += batch.num_rows


def as_string(array: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """An id or category column as Arrow strings (dictionary-decoded; any other type cast to its text)."""
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
