"""The checks of input columns and values, and the encoding of the features as numbers.

Schema checks (:func:`_check_schema`: a column missing or of a type that cannot serve its role) and value checks
(:func:`check_feature_values`: a missing value of a ``missing = "fail"`` feature, an infinity, a category the config
does not list) name the file, the column and the row (rows count from 1 within their file), e.g.
``data/decisions.parquet row 17 (customer_id 'C0017'): column 'housing': 'boat' is not a configured category (own,
rent, mortgage)``. :func:`row_problems` gives the same value checks row by row (:class:`RowProblem`), for the
decisions a run fails alone; :func:`encode` turns checked feature columns into float64 model inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import InputError
from tasks.inputs.config import Config, FeatureConfig
from tasks.inputs.sources import SourceFile, as_string, open_parquet, source_schema


class ProblemSink:
    """Collects problems (``validate``) or raises the first one (every other use)."""

    def __init__(self, collect: list[str] | None) -> None:
        self.collected = collect

    def add(self, message: str) -> None:
        if self.collected is None:
            raise InputError(message)
        if message not in self.collected:
            self.collected.append(message)


# --- schemas -------------------------------------------------------------------------------------


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


def _check_schema(
    source: SourceFile,
    schema: pa.Schema,
    config: Config,
    *,
    need_id: bool,
    extra: Sequence[str],
    problems: ProblemSink,
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


def schema_checked(
    files: Sequence[SourceFile], config: Config, sink: ProblemSink, *, need_id: bool, extra: Sequence[str]
) -> Iterator[tuple[SourceFile, set[str]]]:
    """Each file that opens as Parquet, with the columns its schema breaks (the problems go to ``sink``)."""
    for source in files:
        try:
            handle = open_parquet(source.path)
        except InputError as error:
            sink.add(str(error))
            continue
        schema = source_schema(source, handle)
        yield source, _check_schema(source, schema, config, need_id=need_id, extra=extra, problems=sink)


# --- values --------------------------------------------------------------------------------------


def first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first true value of a boolean array (nulls count as false)."""
    values = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    hits = np.flatnonzero(values)
    return int(hits[0]) if len(hits) else None


def row_label(file: str, row: int, ids: pa.Array | None, id_column: str) -> str:
    """``file row 17 (customer_id 'C17')`` for a 0-based row of ``file``."""
    text = f"{file} row {row + 1}"
    if ids is not None:
        value = ids[row].as_py() if row < len(ids) else None
        if value is not None:
            text += f" ({id_column} {value!r})"
    return text


def check_feature_values(
    table: pa.Table,
    features: Sequence[FeatureConfig],
    skip: set[str],
    file: str,
    offset: int,
    ids: pa.Array | None,
    id_column: str,
    problems: ProblemSink,
) -> None:
    """Nulls and NaNs (of ``missing = "fail"`` features), infinities and unknown categories
    (:func:`_column_checks`), first bad row per column."""
    for feature in features:
        if feature.name in skip:
            continue
        for _, bad, detail in _column_checks(table.column(feature.name), feature):
            rows = np.flatnonzero(bad)
            if rows.size:
                row = int(rows[0])
                problems.add(f"{row_label(file, offset + row, ids, id_column)}: column '{feature.name}': {detail(row)}")
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
    column: pa.ChunkedArray | pa.Array, feature: FeatureConfig
) -> list[tuple[str, np.ndarray, Callable[[int], str]]]:
    """The value checks of one feature column, in order: (kind, bool mask of the bad rows, detail of a bad row).

    A missing value or NaN where the feature has ``missing = "fail"``; an
    infinity; a category the config does not list (nulls are "missing", not that). Both the input-level checks
    (:func:`check_feature_values`) and the row-level ones (:func:`row_problems`).
    """
    def mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return pc.fill_null(array, False).to_numpy(zero_copy_only=False)

    checks: list[tuple[str, np.ndarray, Callable[[int], str]]] = []
    if feature.missing == "fail":
        checks.append(("missing", mask(pc.is_null(column, nan_is_null=True)), lambda row: "missing value"))
    if _is_float(column):
        values = _plain(column)
        checks.append(("infinite", mask(pc.is_inf(values)),
                       lambda row: f"{values[row].as_py()} is not a finite number"))
    if feature.kind == "categorical":
        text = as_string(column)
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


def reference_features(config: Config) -> list[FeatureConfig]:
    """The features as the reference is checked: its gaps are data whatever ``missing`` says (they are what LIME
    samples, docs/method.md "Missing values"); infinities and unknown categories are still problems."""
    return [f.model_copy(update={"missing": "explain"}) if f.missing == "fail" else f for f in config.features]


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
           id_column: str | None = None) -> np.ndarray:
    """Features -> float64 [n, d] in config order (:func:`encode_checked`), after the value checks.

    Raises :class:`InputError` on an infinity, an unknown category or a missing value of a
    ``missing = "fail"`` feature (the caller's ``file``/``offset`` name the row).
    """
    ids = as_string(table.column(id_column)) if id_column and id_column in table.column_names else None
    check_feature_values(table, features, set(), file, offset, ids, id_column or "id", ProblemSink(None))
    return encode_checked(table, features)


def encode_checked(table: pa.Table, features: Sequence[FeatureConfig]) -> np.ndarray:
    """Checked features -> float64 [n, d] in config order; a categorical becomes its index in ``categories``; a
    missing value (null or NaN) becomes NaN."""
    out = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, feature in enumerate(features):
        column = table.column(feature.name)
        if feature.kind == "categorical":
            codes = pc.index_in(as_string(column), value_set=pa.array(feature.categories, pa.string()))
            out[:, j] = codes.to_numpy(zero_copy_only=False)
        else:
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            out[:, j] = pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    return out

