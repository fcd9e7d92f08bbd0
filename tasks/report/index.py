"""The index of a run's customer reports, ``OUT/reports.parquet``: one row per report (id, file, SHA-256,
review flag), beside the manifest.

The manifest records the index's own SHA-256 (``outputs["reports.parquet"]``) and its row count, not the
reports one by one, so its size does not grow with the number of reports (a million reports inline would be
about 230 MB of JSON). Likewise the review list: the manifest keeps its count, and the ids are those whose
rows in ``explanations.parquet`` carry ``needs_review`` (in that file's order), read with
:func:`review_ids`.

Manifests written before the index (``manifest_version`` 1) list the reports inline (``outputs["reports"]``
is a list) and the review ids inline (``review["ids"]``): :func:`manifest_reports` and :func:`review_ids`
read both forms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError
from tasks.inputs.config import Config
from tasks.io import atomic_path, release_unused_memory
from tasks.run.manifest import EXPLANATIONS, check_sha256
from tasks.run.manifest import REPORT_INDEX as INDEX

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("file", pa.string(), nullable=False),  # relative to the output folder, e.g. reports/ab/x.pdf
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("needs_review", pa.bool_(), nullable=False),
])


#: The subfolder of reports whose decision has no date, with ``layout = "date"``.
UNDATED = "undated"


def report_subfolder(layout: str, decision_id: str, decision_date: object = None) -> str:
    """The subfolder of ``OUT/reports/`` a decision's report goes to under ``[report] layout`` ('' for flat).

    ``hash-prefix``: the first two hex digits of the SHA-256 of the id (256 folders, evenly filled, about 3,900
    reports each for a million); ``date``: the decision date as ``YYYY-MM-DD`` (``undated`` without one).
    """
    if layout == "flat":
        return ""
    if layout == "hash-prefix":
        return hashlib.sha256(str(decision_id).encode("utf-8")).hexdigest()[:2]
    if layout == "date":
        if isinstance(decision_date, datetime):
            return decision_date.date().isoformat()
        if isinstance(decision_date, date):
            return decision_date.isoformat()
        text = "" if decision_date is None else str(decision_date).strip()
        try:
            return date.fromisoformat(text[:10]).isoformat()
        except ValueError:
            return UNDATED
    raise ValueError(f"unknown report layout {layout!r}")


def report_subfolders(config: Config, applicants: pd.DataFrame) -> dict[str, str]:
    """Decision id -> subfolder of its report under ``[report] layout`` ({} for flat), from the applicants' rows
    (their id and, for ``date``, their ``[report] date_column``)."""
    layout, id_column = config.report.layout, config.data.id_column
    if layout == "flat":
        return {}
    dates = applicants[config.report.date_column] if layout == "date" else [None] * len(applicants)
    return {str(i): report_subfolder(layout, str(i), None if pd.isna(d) else d)
            for i, d in zip(applicants[id_column], dates, strict=True)}


def entries_table(entries: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Report entries (dicts with the index's columns) as a table of the index's schema."""
    return pa.table({name: [entry[name] for entry in entries] for name in SCHEMA.names}, schema=SCHEMA)


def write_index(tables: Iterable[pa.Table], target: Path) -> int:
    """Write the report tables, in the given order, as the index (streamed, atomically); returns rows."""
    total = 0
    with atomic_path(target) as temp, pq.ParquetWriter(temp, SCHEMA) as writer:
        for table in tables:
            if table.num_rows:
                writer.write_table(table.cast(SCHEMA))
                total += table.num_rows
    release_unused_memory()  # the writer's pages, freed: the flow process goes on to the queue and the summary
    return total


def read_index(path: Path, expected_sha256: str | None = None) -> pa.Table:
    """The index at ``path``, checked against the manifest's SHA-256 when given (one line if it differs)."""
    if expected_sha256 is not None:
        check_sha256(path, expected_sha256, "report index")
    elif not path.is_file():
        raise InputError(f"{path}: report index not found (the manifest names it)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise InputError(f"{path}: not a readable report index ({error})") from None
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise InputError(f"{path}: not a report index (column(s) {', '.join(missing)} missing)")
    return table.select(SCHEMA.names)


def manifest_reports(manifest: Mapping[str, Any], folder: Path) -> pa.Table | None:
    """The reports a manifest describes, as an index table: from ``reports.parquet`` (checked against the
    manifest's SHA-256), or from an older manifest's inline list; None when the run made no reports."""
    reports = manifest.get("outputs", {}).get("reports")
    if reports is None:
        return None
    if isinstance(reports, list):  # manifest_version 1: inline
        return entries_table([{**entry, "needs_review": bool(entry.get("needs_review", False))}
                              for entry in reports])
    described = manifest["outputs"].get(INDEX)
    if not isinstance(described, Mapping) or "sha256" not in described:
        raise InputError(f"{folder / 'manifest.json'}: outputs.reports names no {INDEX} with its SHA-256")
    return read_index(folder / INDEX, str(described["sha256"]))


def review_ids_of(explanations: Path, id_column: str) -> list[str]:
    """The ids whose explanation rows need review, once each, in the file's order."""
    table = pq.read_table(explanations, columns=[id_column, "needs_review"])
    flagged = table.filter(pc.fill_null(table.column("needs_review"), False))
    return list(dict.fromkeys(str(i) for i in flagged.column(id_column).to_pylist()))


def review_ids(manifest: Mapping[str, Any], folder: Path) -> list[str]:
    """The review list of a published run: inline in older manifests, else read from its explanations."""
    review = manifest.get("review", {})
    if "ids" in review:
        return [str(i) for i in review["ids"]]
    return review_ids_of(folder / EXPLANATIONS, str(manifest["inputs"]["id_column"]))
