"""The review queue and a reviewer's decisions: ``OUT/review.parquet``, the decisions file, the review log.

- :func:`queue_table` builds the queue a run publishes: one row per reported decision in review, with its gates,
  the reasons the explanation proposes, its quality figures and the letter (path and SHA-256) as the run wrote it.
- :func:`read_decisions` and :func:`check_decisions` read a reviewer's decisions file (CSV or Parquet; one row per
  decision: ``id, action, reasons, justification, reviewer, time``) and check every row before anything is applied;
  each bad row is one line of :class:`ReviewRowsError`.
- :class:`Resolution` is one decision's resolution as the letter uses it; the review log (``review-log.jsonl``,
  append-only, one JSON object per line) records each one with the letter's SHA-256 before and after.

Applying (tasks/report/review_apply.py) and re-rendering (tasks/report/rerender.py) both build letters from the
log's entries, so a reviewed letter depends only on the run, the decision and its log entry. docs/review.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError

QUEUE = "review.parquet"
LOG = "review-log.jsonl"
JOURNAL = ".review-journal.json"
HISTORY = "manifest-history"
ACTIONS = ("accept", "override")
MAX_REASONS = 4  # Reg B commentary: more than four reasons is not likely to be helpful
COLUMNS = ("id", "action", "reasons", "justification", "reviewer", "time")
SEPARATOR = ";"

QUEUE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("review_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("features", pa.list_(pa.string()), nullable=False),
    pa.field("labels", pa.list_(pa.string()), nullable=False),
    pa.field("weights", pa.list_(pa.float64()), nullable=False),
    pa.field("fidelity", pa.float64()),
    pa.field("stability", pa.float64()),
    pa.field("model_pred", pa.float64()),
    pa.field("prediction_gap", pa.float64()),
    pa.field("file", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
])


class ReviewRowsError(InputError):
    """Rows of a decisions file that cannot be applied: one line each in ``lines``; nothing was applied."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__(f"{len(self.lines)} row(s) of the decisions file cannot be applied; nothing was applied")


# ---------------------------------------------------------------------------------------------- the queue


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


#: The explanations' columns the queue reads (those present): not the texts and values of every factor.
QUEUE_SOURCE_COLUMNS = ("rank", "role", "feature", "label", "weight", "review_reasons", "fidelity", "stability",
                        "model_pred", "prediction_gap", "withheld")


def queue_table(explanations: pa.Table, reports: pa.Table, id_column: str) -> pa.Table:
    """One row per reported decision whose explanation needs review, in the explanations' order.

    ``reports`` is the report index (id, file, sha256, ...). The proposed reasons are the factors shown as
    reasons (``role`` reason, or factor for the other outcome), in rank order: what the letter states (never a
    ``withheld`` protected feature; its gate ``protected-basis`` is among the review reasons).
    """
    flagged = explanations.filter(pc.fill_null(explanations.column("needs_review"), False))
    columns = [c for c in (id_column, *QUEUE_SOURCE_COLUMNS) if c in flagged.column_names]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in flagged.select(columns).to_pylist():
        groups.setdefault(str(row[id_column]), []).append(row)
    # the letters of the decisions in review only: a dict of every report would be O(N) Python objects
    in_review = reports.filter(pc.is_in(reports.column("id"), value_set=pa.array(list(groups), pa.string())))
    letters = {i: (f, s) for i, f, s in zip(in_review.column("id").to_pylist(), in_review.column("file").to_pylist(),
                                            in_review.column("sha256").to_pylist(), strict=True)}
    rows = []
    for decision_id, records in groups.items():
        if decision_id not in letters:  # no letter (its render failed): it is in failures.parquet, not queued
            continue
        records.sort(key=lambda r: int(r["rank"]))
        shown = [r for r in records if r.get("role") != "favourable" and not r.get("withheld")]  # never protected
        first = records[0]
        gates = str(first.get("review_reasons") or "")
        rows.append({
            "id": decision_id,
            "review_reasons": [g for g in gates.split(",") if g],
            "features": [str(r["feature"]) for r in shown],
            "labels": [str(r["label"]) for r in shown],
            "weights": [float(r["weight"]) for r in shown],
            "fidelity": _number(first.get("fidelity")),
            "stability": _number(first.get("stability")),
            "model_pred": _number(first.get("model_pred")),
            "prediction_gap": _number(first.get("prediction_gap")),
            "file": letters[decision_id][0],
            "sha256": letters[decision_id][1],
        })
    return pa.Table.from_pylist(rows, schema=QUEUE_SCHEMA)


def flagged_rows(explanations: Path, id_column: str, batch_rows: int = 8_192) -> pa.Table:
    """The rows of ``explanations.parquet`` that need review, with the queue's columns only, read batch by batch:
    the flow process holds the review share of the run, not the whole table (the texts of every factor)."""
    source = pq.ParquetFile(explanations)
    schema = source.schema_arrow
    columns = [c for c in (id_column, "needs_review", *QUEUE_SOURCE_COLUMNS) if c in schema.names]
    parts = [batch.filter(pc.fill_null(batch.column("needs_review"), False))
             for batch in source.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)]
    return pa.Table.from_batches(parts, pa.schema([schema.field(c) for c in columns]))


def write_queue(explanations: Path, reports: pa.Table, id_column: str, target: Path) -> int:
    """Write ``review.parquet`` (atomically) from the run's explanations and report index; returns its rows."""
    from tasks.io import release_unused_memory, write_table_atomic

    table = queue_table(flagged_rows(explanations, id_column), reports, id_column)
    write_table_atomic(table, target)
    release_unused_memory()  # the pages the scan freed: the flow process renders the summary next
    return table.num_rows


# ---------------------------------------------------------------------------------------------- decisions file


@dataclass(frozen=True)
class Resolution:
    """A reviewer's resolution of one decision in review, as the log records it and the letter shows it."""

    id: str
    action: str  # accept | override
    reasons: tuple[str, ...]  # override: the features the reviewer names, most important first
    justification: str
    reviewer: str
    time: str  # ISO 8601 UTC, e.g. 2026-12-07T09:30:00Z

    def key(self) -> tuple[Any, ...]:
        return (self.id, self.action, self.reasons, self.justification, self.reviewer, self.time)

    def to_log(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "reasons": list(self.reasons),
                "justification": self.justification, "reviewer": self.reviewer, "time": self.time}

    @classmethod
    def from_log(cls, entry: Mapping[str, Any]) -> Resolution:
        return cls(str(entry["id"]), str(entry["action"]), tuple(str(r) for r in entry.get("reasons") or ()),
                   str(entry.get("justification") or ""), str(entry["reviewer"]), str(entry["time"]))


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()


def read_decisions(path: Path) -> list[dict[str, str]]:
    """The rows of a decisions file (``.csv`` or ``.parquet``) as text; a missing column is one line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: decisions file not found")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowInvalid) as error:
        raise InputError(f"{path}: not a readable decisions file ({str(error).splitlines()[0]})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns and c not in ("reasons", "justification")]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} missing (needs {', '.join(COLUMNS)})")
    rows = []
    for record in frame.to_dict("records"):
        raw = record.get("reasons")
        if isinstance(raw, list | tuple) or hasattr(raw, "tolist"):  # a Parquet list column
            reasons = SEPARATOR.join(_text(r) for r in list(raw))
        else:
            reasons = _text(raw)
        rows.append({"id": _text(record["id"]), "action": _text(record["action"]).lower(), "reasons": reasons,
                     "justification": _text(record.get("justification")), "reviewer": _text(record["reviewer"]),
                     "time": _text(record["time"])})
    return rows


def utc_time(text: str) -> str | None:
    """An ISO 8601 time with its offset, as UTC ``YYYY-MM-DDTHH:MM:SSZ``; None if it is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_decisions(rows: Sequence[Mapping[str, str]], source: str, *, queue: Iterable[str], known: Iterable[str],
                    features: Mapping[str, Any], logged: Mapping[str, Resolution]) -> list[Resolution]:
    """Every row checked, all of them, before anything is applied; raises :class:`ReviewRowsError` with one line
    per bad row. ``queue``: the ids in review; ``known``: every reported id; ``features``: the config's
    features by name; ``logged``: the resolution already in the log per id (a row repeating it exactly is
    returned again and applied as a no-op; a different one is refused)."""
    in_queue, reported = set(queue), set(known)
    lines: list[str] = []
    seen: dict[str, int] = {}
    resolutions = []
    for number, row in enumerate(rows, start=2 if source.lower().endswith(".csv") else 1):
        decision_id = row["id"]
        where = f"{source}: row {number}" + (f" (id {decision_id[:80]!r})" if decision_id else "")
        problems = []
        if not decision_id:
            problems.append("no id")
        elif decision_id not in reported:
            problems.append("unknown id (no letter of this run has it)")
        elif decision_id not in in_queue:
            problems.append("not in review (its letter carries no review banner)")
        if decision_id and decision_id in seen:
            problems.append(f"the same id as row {seen[decision_id]}")
        seen.setdefault(decision_id, number)
        action = row["action"]
        reasons = tuple(r.strip() for r in row["reasons"].split(SEPARATOR) if r.strip()) if row["reasons"] else ()
        if action not in ACTIONS:
            problems.append(f"action {action[:20]!r} is not accept or override")
        elif action == "accept" and reasons:
            problems.append("accept takes no reasons (override to replace them)")
        elif action == "override":
            if not reasons:
                problems.append("override needs 1 to 4 reasons")
            elif len(reasons) > MAX_REASONS:
                problems.append(f"override names {len(reasons)} reasons (at most {MAX_REASONS})")
            unknown = [r for r in reasons if r not in features]
            if unknown:
                problems.append(f"reason {unknown[0][:80]!r} is not an input feature of the model")
            protected = [r for r in reasons if r in features and getattr(features[r], "protected", None)]
            if protected:
                problems.append(f"reason {protected[0]!r} is a protected feature: never a stated reason")
            if len(set(reasons)) != len(reasons):
                problems.append("a reason is named twice")
            if not row["justification"]:
                problems.append("override needs a justification")
        if not row["reviewer"]:
            problems.append("no reviewer id")
        time = utc_time(row["time"]) if row["time"] else None
        if time is None:
            problems.append(f"time {row['time'][:40]!r} is not ISO 8601 with a UTC offset (e.g. 2026-12-07T09:30Z)")
        if problems:
            lines.append(f"{where}: {'; '.join(problems)}")
            continue
        resolution = Resolution(decision_id, action, reasons, row["justification"], row["reviewer"], str(time))
        earlier = logged.get(decision_id)
        if earlier is not None and earlier.key() != resolution.key():
            lines.append(f"{where}: already reviewed ({earlier.action} by {earlier.reviewer} at {earlier.time}); "
                         "a decision is resolved once")
            continue
        resolutions.append(resolution)
    if lines:
        raise ReviewRowsError(lines)
    return resolutions


# ---------------------------------------------------------------------------------------------- the log


def read_log(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The log's entries in order. A last line cut short by a kill (no newline) is dropped, and with ``repair``
    truncated from the file, so the entry is appended again whole; any other unreadable line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    if torn and repair:
        with open(path, "r+b") as handle:
            handle.truncate(len(complete) + 1 if complete or data.startswith(b"\n") else 0)
            os.fsync(handle.fileno())
    entries = []
    for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        try:
            entry = json.loads(line)
            Resolution.from_log(entry)
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}: line {number} is not a review log entry") from None
        entries.append(entry)
    return entries


def latest(entries: Iterable[Mapping[str, Any]]) -> dict[str, Resolution]:
    """Decision id -> its resolution (the log resolves a decision once; the last entry wins if it repeats)."""
    return {str(e["id"]): Resolution.from_log(e) for e in entries}


def append_entry(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one entry as one line, in one write, and fsync it before returning."""
    line = (json.dumps(dict(entry), sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def override_features(resolutions: Mapping[str, Resolution]) -> list[str]:
    """The features the overrides name: the decisions' own columns their letters show."""
    return sorted({name for res in resolutions.values() for name in res.reasons})


def review_values(people: pd.DataFrame, id_column: str, resolutions: Mapping[str, Resolution]) -> dict[
        str, tuple[Resolution, dict[str, Any]]]:
    """Decision id -> (its resolution, the decision's own values of the features its override names)."""
    records = {str(r[id_column]): r for r in people.to_dict("records")}
    return {i: (res, {name: records.get(i, {}).get(name) for name in res.reasons}) for i, res in resolutions.items()}


def check_log(earlier: Sequence[Mapping[str, Any]], folder: Path) -> None:
    """The log is append-only: each earlier manifest's log (its bytes, its SHA-256) is a prefix of today's."""
    import hashlib

    data = (Path(folder) / LOG).read_bytes() if (Path(folder) / LOG).exists() else b""
    for previous in earlier:
        record = previous.get("outputs", {}).get(LOG)
        if record is None:
            continue
        if hashlib.sha256(data[: int(record["bytes"])]).hexdigest() != record["sha256"]:
            raise InputError(f"{Path(folder) / LOG}: an entry logged before revision "
                             f"{(previous.get('chain') or {}).get('revision', 0)} was changed or removed "
                             "(the log is append-only)")
