"""Nightly runs: which night a run explains (``run_date``) and which decisions belong to it.

A nightly run explains the decisions of one calendar day, ``run_date`` (ISO ``YYYY-MM-DD``). It defaults
to the day before the run's scheduled start, in the schedule's time zone (flows/deployments.py), so a run
that starts late still explains the night it was scheduled for. The day's decisions are the rows whose
``[data] date_column`` (default: ``[report] date_column``) holds that date. The key is a column of the
decisions or a hive partition key of a dataset folder (``decision_date=2026-11-21/part-0.parquet``); a
partition key is decided from the folder names alone, without reading the files.

Accepted date values: ``date32``/``date64``; timestamps (the date in the timestamp's own time zone);
strings starting with an ISO date (``2026-11-21``, ``2026-11-21T08:15:00``); integers ``20261121``
(pyarrow's and our hive inference turn an all-digit partition value into an integer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import ConfigError, InputError
from tasks.inputs.config import Config
from tasks.inputs.data import DecisionsIndex, select_positions
from tasks.inputs.sources import SourceFile
from tasks.io import file_sha256


def parse_run_date(value: str) -> date:
    """``2026-11-21`` -> date; anything else is a one-line :class:`InputError` naming ``run_date``."""
    text = str(value).strip()
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"run_date {value!r}: not a date (expected YYYY-MM-DD, e.g. 2026-11-21)") from None


def zone(timezone: str) -> ZoneInfo:
    """An IANA time zone (``Europe/London``); an unknown name is a :class:`ConfigError`."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone {timezone!r}: not an IANA time zone name (e.g. Europe/London, UTC)") from None


def previous_day(moment: datetime, timezone: str) -> date:
    """The calendar day before ``moment`` (an aware datetime) as seen in ``timezone``.

    A nightly run scheduled for 02:00 Europe/London on 22 November explains 21 November, also when it
    starts at 00:30 UTC in summer time.
    """
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    return moment.astimezone(zone(timezone)).date() - timedelta(days=1)


def date_key(config: Config) -> str | None:
    """The column or partition key that dates each decision: ``[data] date_column``, else ``[report]``'s."""
    return config.data.date_column or config.report.date_column


def _require_key(config: Config, run_date: str) -> str:
    key = date_key(config)
    if not key:
        raise ConfigError(
            f"{config.source}: [data] date_column: not set; run_date {run_date} needs the column or hive "
            "partition key that holds each decision's date (e.g. date_column = \"decision_date\")"
        )
    return key


def _matches(values: pa.Array | pa.ChunkedArray, day: date, where: str, key: str) -> np.ndarray:
    """Boolean mask of the values that fall on ``day`` (nulls never do)."""
    kind = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if pa.types.is_dictionary(values.type):
        values = values.cast(kind)
    if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        mask = pc.equal(pc.cast(values, pa.date32()), pa.scalar(day, pa.date32()))
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        text = pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(values.cast(pa.string())), 0, 10)
        mask = pc.equal(text, day.isoformat())
    elif pa.types.is_integer(kind):
        mask = pc.equal(values, int(day.strftime("%Y%m%d")))
    else:
        raise InputError(
            f"{where}: column '{key}' ([data] date_column) has type {kind}; it needs a date, a timestamp, an "
            "ISO date string or a yyyymmdd integer"
        )
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _partition_on(source: SourceFile, key: str, day: date) -> bool:
    """Whether the hive partition value ``key`` of a file is ``day``."""
    value = dict(source.partition)[key]
    single = pa.array([value], pa.int64() if isinstance(value, int) else pa.string())
    return bool(_matches(single, day, source.path, key)[0])


def _file_mask(source: SourceFile, key: str, day: date) -> np.ndarray:
    """Which rows of one decisions file fall on ``day``: from its partition value, else from its column."""
    if key in dict(source.partition):
        return np.full(source.num_rows, _partition_on(source, key, day))
    handle = pq.ParquetFile(source.path)
    if key not in handle.schema_arrow.names:
        raise InputError(
            f"{source.path}: date column '{key}' ([data] date_column) not found, neither a column nor a hive "
            f"partition key (columns: {', '.join(handle.schema_arrow.names)})"
        )
    blocks = [_matches(batch.column(0), day, source.path, key)
              for batch in handle.iter_batches(batch_size=65_536, columns=[key], use_threads=False)]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=bool)


def day_positions(index: DecisionsIndex, key: str, day: date) -> np.ndarray:
    """Global row positions (file order) of the decisions dated ``day``."""
    found = [offset + np.flatnonzero(_file_mask(source, key, day))
             for source, offset in zip(index.files, index.offsets, strict=True)]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def select_day(
    index: DecisionsIndex,
    config: Config,
    run_date: str,
    limit: int | None = None,
    ids_file: str | Path | None = None,
) -> np.ndarray:
    """The positions a nightly run explains: that day's decisions, in file order or the ids file's order.

    ``--ids`` keeps the listed ids of that day (in the file's order); ``--limit`` then takes the first N.
    A day without decisions is an :class:`InputError`: a night with nothing to explain says so.
    """
    day = parse_run_date(run_date)
    key = _require_key(config, run_date)
    dated = day_positions(index, key, day)
    listed = select_positions(index, None, ids_file, config.data.id_column)
    positions = dated if listed is None else listed[np.isin(listed, dated)]
    if not len(positions):
        among = f" among the ids of {ids_file}" if ids_file is not None and len(dated) else ""
        raise InputError(f"{config.data.decisions}: no decisions dated {day.isoformat()} ('{key}'){among}")
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit {limit}: must be at least 1")
        positions = positions[:limit]
    return positions


def night_sha256(files: Sequence[SourceFile], config: Config, run_date: str) -> str | None:
    """SHA-256 of the night's own partition, when ``run_date`` selects a hive partition of a dataset folder.

    Hashed like :func:`tasks.io.tree_sha256` hashes the whole folder, but over that day's files only, so
    the partitions of later nights do not change the inputs of a night already explained: rerunning it
    finds its finished (or half-finished) run instead of another run's. None when the date is a column
    (the whole input is hashed then).
    """
    key = date_key(config)
    root = Path(config.data.decisions)
    if not key or not root.is_dir() or not files or not all(key in dict(f.partition) for f in files):
        return None
    day = parse_run_date(run_date)
    digest = hashlib.sha256()
    for source in sorted(files, key=lambda f: Path(f.path).relative_to(root).as_posix()):
        if _partition_on(source, key, day):
            relative = Path(source.path).relative_to(root).as_posix()
            digest.update(relative.encode("utf-8") + b"\0" + file_sha256(source.path).encode("ascii") + b"\n")
    return digest.hexdigest()
