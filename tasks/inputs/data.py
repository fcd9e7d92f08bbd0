"""Reading and validating the decisions and the reference population.

Both inputs are Parquet: one file, or a folder holding a (hive-partitioned) dataset. Everything is
streamed by row groups so memory does not grow with the number of decisions: validation scans
record batches of the needed columns only, and a worker reads its own slice by file path and row
range (:func:`read_rows`, :func:`read_rows_at`).

Every problem is a one-line :class:`InputError` naming the file, the column and the row (rows count
from 1 within their file), e.g. ``data/decisions.parquet row 17 (customer_id 'C0017'): column
'housing': 'boat' is not a configured category (own, rent, mortgage)``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError
from tasks.inputs.config import MIN_REFERENCE_ROWS, Config, FeatureConfig

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


@dataclass
class DecisionsIndex:
    """What planning needs about the decisions: the files in order and every id, in order.

    ``ids`` is a compact Arrow string array (ids only), not a Python list.
    """

    files: tuple[SourceFile, ...]
    ids: pa.ChunkedArray
    offsets: np.ndarray = field(init=False)  # offsets[i]: global position of files[i]'s first row

    def __post_init__(self) -> None:
        counts = np.array([f.num_rows for f in self.files], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])[:-1] if len(counts) else np.zeros(0, np.int64)

    @property
    def num_rows(self) -> int:
        return int(sum(f.num_rows for f in self.files))

    def locate(self, position: int) -> tuple[int, int]:
        """Global row position -> (file index, row within that file)."""
        index = int(np.searchsorted(self.offsets, position, side="right") - 1)
        return index, int(position - self.offsets[index])


@dataclass
class DecisionRows:
    """Rows of the decisions as a worker needs them."""

    ids: list[str]
    x: np.ndarray  # float64 [n, d] in config feature order; categoricals as category index
    applicants: pa.Table  # id column (string) + [report].applicant_fields + date_column that exist


class _Problems:
    """Collects problems (``validate``) or raises the first one (every other use)."""

    def __init__(self, collect: list[str] | None) -> None:
        self.collected = collect

    def add(self, message: str) -> None:
        if self.collected is None:
            raise InputError(message)
        if message not in self.collected:
            self.collected.append(message)


# --- files ---------------------------------------------------------------------------------------


def list_source_files(path: Path, key: str) -> list[SourceFile]:
    """The Parquet files of an input (one file or a hive-partitioned folder), with row counts.

    ``key`` names the config key (``[data] decisions``) for messages.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found ({key})")
    if path.is_file():
        return [SourceFile(str(path), _open(path).metadata.num_rows)]
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
        sources.append(SourceFile(str(file), _open(file).metadata.num_rows, typed))
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


def _open(path: Path | str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a readable Parquet file ({reason})") from None


def _schema(source: SourceFile, handle: pq.ParquetFile) -> pa.Schema:
    """The file's Arrow schema plus its partition columns."""
    schema = handle.schema_arrow
    for name, value in source.partition:
        if name not in schema.names:
            schema = schema.append(pa.field(name, pa.int64() if isinstance(value, int) else pa.string()))
    return schema


def _with_partition(batch: pa.RecordBatch | pa.Table, source: SourceFile, wanted: Sequence[str]) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    for name, value in source.partition:
        if name in wanted and name not in table.column_names:
            kind = pa.int64() if isinstance(value, int) else pa.string()
            table = table.append_column(name, pa.array([value] * table.num_rows, type=kind))
    return table


def _physical(columns: Sequence[str], handle: pq.ParquetFile) -> list[str]:
    names = set(handle.schema_arrow.names)
    return [c for c in columns if c in names]


def _iter_tables(source: SourceFile, columns: Sequence[str]) -> Iterator[tuple[int, pa.Table]]:
    """Yield (first row, table) of ``columns`` in record batches; partition columns are filled in."""
    handle = _open(source.path)
    offset = 0
    physical = _physical(columns, handle)
    if not physical:  # only partition columns wanted: still need the row counts
        for group in range(handle.num_row_groups):
            rows = handle.metadata.row_group(group).num_rows
            table = _with_partition(pa.table({"__rows__": pa.nulls(rows)}), source, columns)
            yield offset, table.drop_columns(["__rows__"])
            offset += rows
        return
    for batch in handle.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=physical, use_threads=False):
        yield offset, _with_partition(batch, source, columns)
        offset += batch.num_rows


# --- types and values ----------------------------------------------------------------------------


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_stringy(kind: pa.DataType) -> bool:
    kind = _value_type(kind)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_numeric(kind: pa.DataType) -> bool:
    kind = _value_type(kind)
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _type_problem(name: str, kind: pa.DataType, role: str) -> str | None:
    """Why a column's type cannot serve its role, or None.

    An all-null column (Arrow type ``null``) passes here: the value checks report its missing values.
    """
    if pa.types.is_null(kind):
        return None
    if role == "id":
        ok = _is_stringy(kind) or pa.types.is_integer(_value_type(kind))
        need = "a string or integer"
    elif role == "numeric":
        ok = _is_numeric(kind)
        need = "a number (integer, float or decimal)"
    else:
        ok = _is_stringy(kind) or pa.types.is_integer(_value_type(kind))
        need = "a string (category text)"
    if ok:
        return None
    what = "an id column" if role == "id" else f"a {role} feature"
    return f"column '{name}' has type {kind}; {what} needs {need}"


def _as_string(array: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


def _first(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first true value of a boolean array (nulls count as false)."""
    values = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    hits = np.flatnonzero(values)
    return int(hits[0]) if len(hits) else None


def _where(file: str, row: int, ids: pa.Array | None, id_column: str) -> str:
    """``file row 17 (customer_id 'C17')`` for a 0-based row of ``file``."""
    text = f"{file} row {row + 1}"
    if ids is not None:
        value = ids[row].as_py() if row < len(ids) else None
        if value is not None:
            text += f" ({id_column} {value!r})"
    return text


def _check_feature_values(
    table: pa.Table,
    features: Sequence[FeatureConfig],
    skip: set[str],
    file: str,
    offset: int,
    ids: pa.Array | None,
    id_column: str,
    problems: _Problems,
    missing_is_data: bool = False,
) -> None:
    """Nulls and NaNs (of ``missing = "fail"`` features, unless ``missing_is_data``: the reference), infinities
    and unknown categories (:func:`_column_checks`), first bad row per column."""
    for feature in features:
        if feature.name in skip:
            continue
        for _, bad, detail in _column_checks(table.column(feature.name), feature, missing_is_data):
            rows = np.flatnonzero(bad)
            if rows.size:
                row = int(rows[0])
                problems.add(f"{_where(file, offset + row, ids, id_column)}: column '{feature.name}': {detail(row)}")
                skip.add(feature.name)
                break


def _is_float(column: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_floating(_value_type(column.type))


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


@dataclass(frozen=True)
class RowProblem:
    """One row-level problem of a decision: its ``kind`` (a key of :data:`ROW_PROBLEM_KINDS`), the column,
    and the detail; ``str()`` is the text of the failures table, e.g. ``column 'income': missing value``."""

    kind: str
    column: str
    detail: str

    def __str__(self) -> str:
        return f"column '{self.column}': {self.detail}"


#: Row-level problem kinds -> (singular, plural) for counts, e.g. ``2 missing values``.
ROW_PROBLEM_KINDS = {
    "missing": ("missing value", "missing values"),
    "infinite": ("infinite value", "infinite values"),
    "category": ("unknown category", "unknown categories"),
}


def _column_checks(
    column: pa.ChunkedArray | pa.Array, feature: FeatureConfig, missing_is_data: bool = False
) -> list[tuple[str, np.ndarray, Callable[[int], str]]]:
    """The value checks of one feature column, in order: (kind, bool mask of the bad rows, detail of a bad row).

    A missing value or NaN where the feature has ``missing = "fail"`` (and not ``missing_is_data``); an
    infinity; a category the config does not list (nulls are "missing", not that). Both the input-level checks
    (:func:`_check_feature_values`) and the row-level ones (:func:`row_problems`).
    """
    def mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return pc.fill_null(array, False).to_numpy(zero_copy_only=False)

    checks: list[tuple[str, np.ndarray, Callable[[int], str]]] = []
    if feature.missing == "fail" and not missing_is_data:
        checks.append(("missing", mask(pc.is_null(column, nan_is_null=True)), lambda row: "missing value"))
    if _is_float(column):
        values = _plain(column)
        checks.append(("infinite", mask(pc.is_inf(values)),
                       lambda row: f"{values[row].as_py()} is not a finite number"))
    if feature.kind == "categorical":
        text = _as_string(column)
        known = pc.is_in(text, value_set=pa.array(feature.categories, pa.string()))
        allowed = ", ".join(feature.categories or [])
        checks.append(("category", mask(pc.and_(pc.invert(known), pc.is_valid(text))),
                       lambda row: f"{text[row].as_py()!r} is not a configured category ({allowed})"))
    return checks


def decision_features(config: Config) -> list[FeatureConfig]:
    """The features as the decisions are checked: with ``[explain] engine = "lime"`` every feature is
    ``missing = "fail"`` (the lime package cannot explain a missing value); otherwise as configured."""
    if config.explain.engine != "lime":
        return list(config.features)
    return [f.model_copy(update={"missing": "fail"}) for f in config.features]


def row_problems(table: pa.Table, features: Sequence[FeatureConfig]) -> dict[int, RowProblem]:
    """Row-level problems of a batch of decisions: row (0-based, in ``table``) -> the problem, naming the column.

    These are the problems a night's run survives (the decision goes to the failures table) and that
    ``limelight validate`` warns about: a missing value or NaN in a feature with ``missing = "fail"``, an
    infinity, and a category the config does not list. A row with several problems gets the first, in feature
    order. A missing value in any other feature is explained (docs/method.md, "Missing values").
    """
    reasons: dict[int, RowProblem] = {}
    for feature in features:
        for kind, bad, detail in _column_checks(table.column(feature.name), feature):
            for row in np.flatnonzero(bad):
                reasons.setdefault(int(row), RowProblem(kind, feature.name, detail(int(row))))
    return reasons


def encode(table: pa.Table, features: Sequence[FeatureConfig], file: str = "", offset: int = 0,
           id_column: str | None = None, missing_is_data: bool = False) -> np.ndarray:
    """Features -> float64 [n, d] in config order; a categorical becomes its index in ``categories``; a
    missing value (null or NaN) becomes NaN.

    Raises :class:`InputError` on an infinity, an unknown category or a missing value of a
    ``missing = "fail"`` feature (unless ``missing_is_data``) (the caller's ``file``/``offset`` name the row).
    """
    ids = _as_string(table.column(id_column)) if id_column and id_column in table.column_names else None
    _check_feature_values(table, features, set(), file, offset, ids, id_column or "id", _Problems(None),
                          missing_is_data)
    out = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, feature in enumerate(features):
        column = table.column(feature.name)
        if feature.kind == "categorical":
            codes = pc.index_in(_as_string(column), value_set=pa.array(feature.categories, pa.string()))
            out[:, j] = codes.to_numpy(zero_copy_only=False)
        else:
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            out[:, j] = pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    return out


# --- decisions -----------------------------------------------------------------------------------


def _check_schema(
    source: SourceFile,
    schema: pa.Schema,
    config: Config,
    *,
    need_id: bool,
    extra: Sequence[str],
    problems: _Problems,
) -> set[str]:
    """Missing columns and wrong types; returns the names of columns that cannot be checked further."""
    broken: set[str] = set()
    wanted: list[tuple[str, str]] = []
    if need_id:
        wanted.append((config.data.id_column, "id"))
    wanted += [(f.name, f.kind) for f in config.features]
    for name, role in wanted:
        if name not in schema.names:
            what = "id column ([data] id_column)" if role == "id" else "feature column"
            problems.add(f"{source.path}: {what} '{name}' not found (columns: {', '.join(schema.names)})")
            broken.add(name)
            continue
        problem = _type_problem(name, schema.field(name).type, role)
        if problem:
            problems.add(f"{source.path}: {problem}")
            broken.add(name)
    for name in extra:
        if name not in schema.names:
            problems.add(f"{source.path}: column '{name}' ([report]) not found (columns: {', '.join(schema.names)})")
    return broken


def report_columns(config: Config) -> list[str]:
    """The decision columns the reports show: ``[report].applicant_fields`` then ``date_column``."""
    columns = list(config.report.applicant_fields)
    if config.report.date_column and config.report.date_column not in columns:
        columns.append(config.report.date_column)
    return [c for c in columns if c != config.data.id_column]


def _schema_checked(
    files: Sequence[SourceFile], config: Config, sink: _Problems, *, need_id: bool, extra: Sequence[str]
) -> Iterator[tuple[SourceFile, set[str]]]:
    """Each file that opens as Parquet, with the columns its schema breaks (the problems go to ``sink``)."""
    for source in files:
        try:
            handle = _open(source.path)
        except InputError as error:
            sink.add(str(error))
            continue
        schema = _schema(source, handle)
        yield source, _check_schema(source, schema, config, need_id=need_id, extra=extra, problems=sink)


def scan_decisions(
    config: Config, *, require_report_columns: bool = False, problems: list[str] | None = None,
    row_failures: dict[int, str] | None = None, row_kinds: dict[int, str] | None = None,
) -> DecisionsIndex | None:
    """Validate the decisions (streamed) and return the files and ids for planning.

    With ``problems`` given, every problem found is appended to it (and None returned if any);
    otherwise the first one raises :class:`InputError`. ``require_report_columns`` makes a
    missing ``[report]`` column a problem (it is when reports are rendered).

    With ``row_failures`` given, row-level problems (:func:`row_problems`) do not stop the scan: they
    are recorded there as global row position -> reason naming the file, row and column, and in
    ``row_kinds`` (when given) as position -> :attr:`RowProblem.kind`. Collecting ``problems`` too, a file
    whose schema breaks some features still has its other features checked row by row.
    """
    sink = _Problems(problems)
    start = len(problems) if problems is not None else 0
    id_column = config.data.id_column
    try:
        files = list_source_files(config.data.decisions, "[data] decisions")
    except InputError as error:
        sink.add(str(error))
        return None
    extra = report_columns(config) if require_report_columns else []
    id_chunks: list[pa.Array] = []
    base = dict(zip((f.path for f in files), np.cumsum([0] + [f.num_rows for f in files]).tolist(), strict=False))
    for source, broken in _schema_checked(files, config, sink, need_id=True, extra=extra):
        columns = [id_column] + [f.name for f in config.features if f.name not in broken]
        if id_column in broken:
            continue
        for offset, table in _iter_tables(source, columns):
            ids = _as_string(table.column(id_column).combine_chunks())
            row = _first(pc.is_null(ids))
            if row is not None:
                sink.add(f"{_where(source.path, offset + row, None, id_column)}: column '{id_column}': missing id")
                broken.add(id_column)
                break
            if row_failures is not None:
                checkable = [f for f in decision_features(config) if f.name not in broken]
                for row, problem in row_problems(table, checkable).items():
                    where = _where(source.path, offset + row, None, id_column)
                    row_failures[base[source.path] + offset + row] = f"{where}: {problem}"
                    if row_kinds is not None:
                        row_kinds[base[source.path] + offset + row] = problem.kind
            else:
                _check_feature_values(table, decision_features(config), broken, source.path, offset, ids, id_column,
                                      sink)
            id_chunks.append(ids)
    if problems is not None and len(problems) > start:
        return None
    index = DecisionsIndex(tuple(files), pa.chunked_array(id_chunks, type=pa.string()))
    if index.num_rows == 0:
        sink.add(f"{config.data.decisions}: no decisions (0 rows)")
        return None
    _check_unique_ids(index, id_column, sink)
    if problems is not None and len(problems) > start:
        return None
    return index


def _check_unique_ids(index: DecisionsIndex, id_column: str, problems: _Problems) -> None:
    if len(pc.unique(index.ids)) == len(index.ids):
        return
    counts = pc.value_counts(index.ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    first_value = repeated[0]
    positions = np.flatnonzero(pc.equal(index.ids, first_value).to_numpy(zero_copy_only=False))
    (f1, r1), (f2, r2) = index.locate(int(positions[0])), index.locate(int(positions[1]))
    first_at = f"row {r1 + 1}" if f1 == f2 else f"{index.files[f1].path} row {r1 + 1}"
    problems.add(
        f"{index.files[f2].path} row {r2 + 1}: column '{id_column}': duplicate id {first_value.as_py()!r} "
        f"(first at {first_at}; {len(repeated)} id{'s' if len(repeated) > 1 else ''} repeated)"
    )


def iter_ids(config: Config) -> Iterator[pa.Array]:
    """The decision ids in file/row order, one Arrow string array per record batch (no validation)."""
    for source in list_source_files(config.data.decisions, "[data] decisions"):
        for _, table in _iter_tables(source, [config.data.id_column]):
            yield _as_string(table.column(config.data.id_column).combine_chunks())


def decision_ids(config: Config) -> list[str]:
    """Every decision id in order (ids only, streamed)."""
    return [value for chunk in iter_ids(config) for value in chunk.to_pylist()]


def _applicant_columns(config: Config, table: pa.Table) -> list[str]:
    return [c for c in report_columns(config) if c in table.column_names]


def _row_groups(handle: pq.ParquetFile, start: int, stop: int) -> tuple[list[int], int]:
    """Row groups overlapping ``[start, stop)`` and the first row of the first of them."""
    groups, first, offset = [], None, 0
    for group in range(handle.num_row_groups):
        rows = handle.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            groups.append(group)
            first = offset if first is None else first
        offset += rows
    return groups, (first if first is not None else start)


def _read_table(config: Config, source: SourceFile, rows: np.ndarray) -> pa.Table:
    """The decision columns of the given (sorted, unique) rows of one file, reading only their row groups."""
    handle = _open(source.path)
    total = handle.metadata.num_rows
    if len(rows) and (rows[0] < 0 or rows[-1] >= total):
        raise InputError(f"{source.path}: rows {rows[0] + 1}..{rows[-1] + 1} out of range ({total} rows)")
    wanted = [config.data.id_column] + config.feature_names + report_columns(config)
    wanted = list(dict.fromkeys(wanted))
    groups, first = _row_groups(handle, int(rows[0]), int(rows[-1]) + 1) if len(rows) else ([], 0)
    physical = _physical(wanted, handle)
    if groups:
        table = handle.read_row_groups(groups, columns=physical, use_threads=False)
    else:
        table = handle.schema_arrow.empty_table().select(physical)
    table = table.take(pa.array(rows - first, pa.int64())) if groups else table
    return _with_partition(table, source, wanted)


def _to_rows(config: Config, table: pa.Table, source: SourceFile, first_row: int) -> DecisionRows:
    id_column = config.data.id_column
    for name in [id_column] + config.feature_names:
        if name not in table.column_names:
            raise InputError(f"{source.path}: column '{name}' not found")
    ids = _as_string(table.column(id_column))
    x = encode(table, decision_features(config), source.path, first_row, id_column)
    applicant_names = _applicant_columns(config, table)
    applicants = pa.table(
        [ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids]
        + [table.column(c) for c in applicant_names],
        names=[id_column, *applicant_names],
    )
    return DecisionRows(ids=ids.to_pylist(), x=x, applicants=applicants)


def read_rows(config: Config, source: SourceFile, start: int, stop: int) -> DecisionRows:
    """Rows ``[start, stop)`` of one decisions file: ids, encoded features, report columns."""
    rows = np.arange(start, stop, dtype=np.int64)
    return _to_rows(config, _read_table(config, source, rows), source, start)


def read_rows_at(config: Config, source: SourceFile, rows: Sequence[int] | np.ndarray) -> DecisionRows:
    """Arbitrary rows of one decisions file, in the order given (used for ``--ids``)."""
    wanted = np.asarray(rows, dtype=np.int64)
    unique, inverse = np.unique(wanted, return_inverse=True)
    table = _read_table(config, source, unique).take(pa.array(inverse, pa.int64()))
    return _to_rows(config, table, source, int(unique[0]) if len(unique) else 0)


def concat_rows(parts: Sequence[DecisionRows], id_column: str, d: int) -> DecisionRows:
    """Join row blocks in order (the applicant tables may differ in dictionary/partition types)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return DecisionRows([], np.empty((0, d)), pa.table({id_column: pa.array([], pa.string())}))
    applicants = pa.concat_tables([p.applicants for p in parts], promote_options="permissive")
    return DecisionRows(
        ids=[i for p in parts for i in p.ids], x=np.vstack([p.x for p in parts]), applicants=applicants
    )


# --- reference -----------------------------------------------------------------------------------


def read_reference(config: Config, problems: list[str] | None = None) -> np.ndarray:
    """The reference population encoded like the decisions: float64 [n, d], NaN where a value is missing (the
    reference keeps its gaps: they are data, docs/method.md "Missing values")."""
    sink = _Problems(problems)
    start = len(problems) if problems is not None else 0
    empty = np.empty((0, len(config.features)))
    try:
        files = list_source_files(config.data.reference, "[data] reference")
    except InputError as error:
        sink.add(str(error))
        return empty
    blocks: list[np.ndarray] = []
    for source, broken in _schema_checked(files, config, sink, need_id=False, extra=[]):
        if broken:
            continue
        for offset, table in _iter_tables(source, config.feature_names):
            skip: set[str] = set()
            _check_feature_values(table, config.features, skip, source.path, offset, None, "id", sink,
                                  missing_is_data=True)
            if skip:
                break
            blocks.append(encode(table, config.features, missing_is_data=True))
    if problems is not None and len(problems) > start:
        return empty
    reference = np.vstack(blocks) if blocks else empty
    gaps = np.isnan(reference).any(axis=0) if len(reference) else np.zeros(len(config.features), bool)
    if config.explain.engine == "lime" and gaps.any():
        name = config.features[int(np.argmax(gaps))].name
        sink.add(f"{config.data.reference}: column '{name}' has missing values, which [explain] engine = \"lime\" "
                 "cannot sample (the lime package has no missing-value support): use engine = \"batched\"")
        return empty
    empty_columns = np.isnan(reference).all(axis=0) if len(reference) else np.zeros(len(config.features), bool)
    if empty_columns.any():
        name = config.features[int(np.argmax(empty_columns))].name
        sink.add(f"{config.data.reference}: column '{name}' has no value (every row is missing it)")
        return empty
    if len(reference) < MIN_REFERENCE_ROWS:
        sink.add(
            f"{config.data.reference}: reference has {len(reference)} row{'s' if len(reference) != 1 else ''}; "
            f"LIME's statistics need at least {MIN_REFERENCE_ROWS}"
        )
        return empty
    return reference


# --- --ids files ---------------------------------------------------------------------------------


def read_id_file(path: str | Path, index: DecisionsIndex, id_column: str) -> np.ndarray:
    """Global row positions of the ids listed in ``path`` (text or CSV, one id per line), in file order.

    Blank lines and ``#`` comments are skipped, as is a first line that is the id column's name.
    Unknown and repeated ids are errors naming the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: ids file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read ids file ({error})") from None
    values: list[str] = []
    lines: list[int] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        value = row[0].strip() if row else ""
        if not value or value.startswith("#"):
            continue
        if not values and value == id_column:
            continue
        values.append(value)
        lines.append(number)
    if not values:
        raise InputError(f"{path}: ids file lists no ids")
    seen: dict[str, int] = {}
    for value, number in zip(values, lines, strict=True):
        if value in seen:
            raise InputError(f"{path} line {number}: {id_column} {value!r} already listed on line {seen[value]}")
        seen[value] = number
    positions = pc.index_in(pa.array(values, pa.string()), value_set=index.ids.combine_chunks())
    missing = _first(pc.is_null(positions))
    if missing is not None:
        raise InputError(
            f"{path} line {lines[missing]}: unknown {id_column} {values[missing]!r} (not in the decisions)"
        )
    return positions.to_numpy(zero_copy_only=False).astype(np.int64)


def select_positions(
    index: DecisionsIndex, limit: int | None = None, ids_file: str | Path | None = None, id_column: str = "id"
) -> np.ndarray | None:
    """Global row positions to explain, or None for "every row in order" (planned without a list)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    if ids_file is None:
        return None if limit is None else np.arange(min(limit, index.num_rows), dtype=np.int64)
    positions = read_id_file(ids_file, index, id_column)
    return positions if limit is None else positions[:limit]
