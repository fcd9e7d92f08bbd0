"""Reading the decisions and the reference population: the public reading API of the inputs.

Both inputs are Parquet: one file, or a folder holding a (hive-partitioned) dataset (tasks/inputs/sources.py).
Everything is streamed by row groups so memory does not grow with the number of decisions: validation
(:func:`scan_decisions`, :func:`read_reference`) scans record batches of the needed columns only, and a worker
reads its own slice by file path and row range (:func:`read_rows`, :func:`read_rows_at`).

Every problem is a one-line :class:`InputError` naming the file, the column and the row (the checks are
tasks/inputs/checks.py), e.g. ``data/decisions.parquet row 17 (customer_id 'C0017'): column 'housing': 'boat' is
not a configured category (own, rent, mortgage)``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError
from tasks.inputs.checks import (
    ProblemSink,
    check_feature_values,
    decision_features,
    encode,
    encode_checked,
    first_true,
    reference_features,
    row_label,
    row_problems,
    schema_checked,
)
from tasks.inputs.config import MIN_REFERENCE_ROWS, Config
from tasks.inputs.sources import (
    SourceFile,
    as_string,
    iter_tables,
    list_source_files,
    open_parquet,
    physical_columns,
    with_partition,
)
from tasks.io import release_unused_memory


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


# --- decisions -----------------------------------------------------------------------------------


def report_columns(config: Config) -> list[str]:
    """The decision columns the reports show: ``[report].applicant_fields`` then ``date_column``."""
    columns = list(config.report.applicant_fields)
    if config.report.date_column and config.report.date_column not in columns:
        columns.append(config.report.date_column)
    return [c for c in columns if c != config.data.id_column]


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
    sink = ProblemSink(problems)
    start = len(problems) if problems is not None else 0
    id_column = config.data.id_column
    try:
        files = list_source_files(config.data.decisions, "[data] decisions")
    except InputError as error:
        sink.add(str(error))
        return None
    extra = report_columns(config) if require_report_columns else []
    id_chunks: list[pa.Array] = []
    features = decision_features(config)
    base = dict(zip((f.path for f in files), np.cumsum([0] + [f.num_rows for f in files]).tolist(), strict=False))
    for source, broken in schema_checked(files, config, sink, need_id=True, extra=extra):
        columns = [id_column] + [f.name for f in config.features if f.name not in broken]
        if id_column in broken:
            continue
        for offset, table in iter_tables(source, columns):
            ids = as_string(table.column(id_column).combine_chunks())
            row = first_true(pc.is_null(ids))
            if row is not None:
                sink.add(f"{row_label(source.path, offset + row, None, id_column)}: column '{id_column}': missing id")
                broken.add(id_column)
                break
            if row_failures is not None:
                checkable = [f for f in features if f.name not in broken]
                for row, problem in row_problems(table, checkable).items():
                    where = row_label(source.path, offset + row, None, id_column)
                    row_failures[base[source.path] + offset + row] = f"{where}: {problem}"
                    if row_kinds is not None:
                        row_kinds[base[source.path] + offset + row] = problem.kind
            else:
                check_feature_values(table, features, broken, source.path, offset, ids, id_column, sink)
            id_chunks.append(ids)
            release_unused_memory()  # the batch just checked
    if problems is not None and len(problems) > start:
        return None
    # One contiguous copy: the batches' id slices kept the allocator's pages of whole batches in use.
    ids = pa.chunked_array(id_chunks, type=pa.string()).combine_chunks()
    id_chunks.clear()
    release_unused_memory()
    index = DecisionsIndex(tuple(files), pa.chunked_array([ids], type=pa.string()))
    if index.num_rows == 0:
        sink.add(f"{config.data.decisions}: no decisions (0 rows)")
        return None
    _check_unique_ids(index, id_column, sink)
    if problems is not None and len(problems) > start:
        return None
    return index


def _check_unique_ids(index: DecisionsIndex, id_column: str, problems: ProblemSink) -> None:
    """Refuse a repeated id. Sorted, repeats are neighbours: at a million ids this holds about half the
    memory a hash table (``pc.unique``) does, at the peak of the flow process's run (docs/performance.md)."""
    ids = index.ids
    if len(ids) < 2:
        return
    ordered = ids.take(pc.sort_indices(ids))
    if not pc.any(pc.equal(ordered[1:], ordered[:-1])).as_py():
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
        for _, table in iter_tables(source, [config.data.id_column]):
            yield as_string(table.column(config.data.id_column).combine_chunks())


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
    handle = open_parquet(source.path)
    total = handle.metadata.num_rows
    if len(rows) and (rows[0] < 0 or rows[-1] >= total):
        raise InputError(f"{source.path}: rows {rows[0] + 1}..{rows[-1] + 1} out of range ({total} rows)")
    wanted = [config.data.id_column] + config.feature_names + report_columns(config)
    wanted = list(dict.fromkeys(wanted))
    groups, first = _row_groups(handle, int(rows[0]), int(rows[-1]) + 1) if len(rows) else ([], 0)
    physical = physical_columns(wanted, handle)
    if groups:
        table = handle.read_row_groups(groups, columns=physical, use_threads=False)
    else:
        table = handle.schema_arrow.empty_table().select(physical)
    table = table.take(pa.array(rows - first, pa.int64())) if groups else table
    return with_partition(table, source, wanted)


def _to_rows(config: Config, table: pa.Table, source: SourceFile, first_row: int) -> DecisionRows:
    id_column = config.data.id_column
    for name in [id_column] + config.feature_names:
        if name not in table.column_names:
            raise InputError(f"{source.path}: column '{name}' not found")
    ids = as_string(table.column(id_column))
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
    sink = ProblemSink(problems)
    start = len(problems) if problems is not None else 0
    empty = np.empty((0, len(config.features)))
    try:
        files = list_source_files(config.data.reference, "[data] reference")
    except InputError as error:
        sink.add(str(error))
        return empty
    blocks: list[np.ndarray] = []
    features = reference_features(config)
    for source, broken in schema_checked(files, config, sink, need_id=False, extra=[]):
        if broken:
            continue
        for offset, table in iter_tables(source, config.feature_names):
            skip: set[str] = set()
            check_feature_values(table, features, skip, source.path, offset, None, "id", sink)
            if skip:
                break
            blocks.append(encode_checked(table, features))
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
    missing = first_true(pc.is_null(positions))
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
