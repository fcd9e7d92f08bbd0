"""``limelight review apply OUT --decisions FILE``: a reviewer's decisions applied to a published run.

1. Every row is checked first (tasks/report/review.py); one bad row and nothing is applied.
2. The letters of the new resolutions are rendered (tasks/report/reviewed.py) to temporary files beside their
   targets and fsynced; then the batch is written to a journal (``OUT/.review-journal.json``).
3. Per letter: the temporary file is renamed over the letter, then its entry appended to ``review-log.jsonl``
   (one line, fsynced): the log entry comes last.
4. The report index gets the new SHA-256 (and no review flag); the manifest in force is kept as
   ``manifest-history/manifest-<n>.json`` and a new one, revision n + 1, names it with its SHA-256 and describes
   the new index and the log; the journal is removed.

A kill at any point leaves a journal (or nothing); the next ``review apply`` (or the rerun of the same file) first
finishes the journal's batch: a letter already renamed is not rendered again, an entry already in the log is not
appended again. A decision is resolved once: a row that repeats its logged resolution is a no-op. docs/review.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import InputError
from tasks.io import file_sha256, write_json_atomic
from tasks.report import index as report_index
from tasks.report import review
from tasks.report.render import customer_pdfs
from tasks.report.rerender import _inputs, applicants, load_manifest, run_info
from tasks.run import manifest as mf

#: Test hook: called with a step name ("renamed", "logged", "index", "archived", "manifest") and the entry's
#: position; a test kills the process there. Nothing in limelight sets it.
STEP_HOOK: Callable[[str, int], None] | None = None


@dataclass(frozen=True)
class Applied:
    """What one ``review apply`` did."""

    applied: int  # new resolutions applied (letters re-rendered, log entries appended)
    accepted: int
    overridden: int
    repeated: int  # rows that repeat a logged resolution: nothing to do
    recovered: int  # entries of an interrupted earlier batch finished first
    log_entries: int  # entries in the log afterwards
    revision: int  # the manifest's revision afterwards


def _step(name: str, position: int) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name, position)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One ``review apply`` per output folder at a time."""
    with open(out / ".review.lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out}: another review apply is running on this folder") from None
        yield


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _published(out: Path) -> tuple[dict[str, Any], Any, Path, Any, pa.Table, pa.Table]:
    """The run in ``out``, checked: manifest, config, explanations, run facts, report index and review queue."""
    manifest_path = out / mf.MANIFEST
    manifest = load_manifest(manifest_path)
    config, explanations = _inputs(manifest, manifest_path)
    run = run_info(manifest, explanations)
    reports = report_index.manifest_reports(manifest, out)
    queue_record = manifest["outputs"].get(review.QUEUE)
    if reports is None or queue_record is None:
        raise InputError(f"{manifest_path}: the run published no letters and no review queue ({review.QUEUE}); "
                         "re-run it with this limelight version")
    mf.check_sha256(out / review.QUEUE, queue_record["sha256"], "review queue")
    log_record = manifest["outputs"].get(review.LOG)
    if log_record is not None:
        mf.check_sha256(out / review.LOG, log_record["sha256"], "review log")
    elif (out / review.LOG).exists() and (out / review.LOG).stat().st_size:
        raise InputError(f"{out / review.LOG}: a review log the manifest does not describe")
    return manifest, config, explanations, run, reports, pq.read_table(out / review.QUEUE)


def apply_decisions(out: str | Path, decisions: str | Path, *, applied_at: str | None = None) -> Applied:
    """Apply a reviewer's decisions file to the published run in ``out`` (see the module's docstring).

    Raises :class:`review.ReviewRowsError` (one line per bad row) before anything changes, and
    :class:`InputError` when the run's files are not the ones its manifest describes.
    """
    out, decisions = Path(out).resolve(), Path(decisions)
    if not (out / mf.MANIFEST).is_file():
        raise InputError(f"{out}: no published run here ({mf.MANIFEST} not found)")
    with _locked(out):
        recovered = finish_journal(out)
        for stray in (out / mf.REPORTS).rglob(".*.review-*.tmp"):  # a kill before the journal: never applied
            stray.unlink()
        manifest, config, explanations, run, reports, queue = _published(out)
        entries = review.read_log(out / review.LOG)
        logged = review.latest(entries)
        resolutions = review.check_decisions(
            review.read_decisions(decisions), decisions.name, queue=queue.column("id").to_pylist(),
            known=reports.column("id").to_pylist(), features={f.name: f for f in config.features}, logged=logged)
        new = [r for r in resolutions if r.id not in logged]
        if new:
            stamp = applied_at or mf.iso(mf.utc_now())
            journal = _prepare(out, config, explanations, run, reports, new, decisions, stamp)
            write_json_atomic(out / review.JOURNAL, journal)
            _fsync_dir(out)
            _finish(out, journal)
        final = load_manifest(out / mf.MANIFEST)
        return Applied(len(new), sum(r.action == "accept" for r in new), sum(r.action == "override" for r in new),
                       len(resolutions) - len(new), recovered, len(review.read_log(out / review.LOG)),
                       mf.revision(final))


def _prepare(out: Path, config: Any, explanations: Path, run: Any, reports: pa.Table,
             new: Sequence[review.Resolution], decisions: Path, stamp: str) -> dict[str, Any]:
    """Render the new letters to fsynced temporary files; return the journal of the batch."""
    id_column = config.data.id_column
    ids = {r.id for r in new}
    by_id = {r.id: r for r in new}
    letters = {i: (f, s) for i, f, s in zip(reports.column("id").to_pylist(), reports.column("file").to_pylist(),
                                            reports.column("sha256").to_pylist(), strict=True)}
    rows = pd.read_parquet(explanations)
    rows = rows[rows[id_column].astype(str).isin(ids)]
    people = applicants(config, ids, review.override_features(by_id))
    batch = uuid.uuid4().hex[:12]
    source = {"decisions_file": decisions.name, "decisions_sha256": file_sha256(decisions)}
    journal_entries: dict[str, dict[str, Any]] = {}
    for doc, pdf in customer_pdfs(rows, people, config, run, review.review_values(people, id_column, by_id)):
        file, recorded = letters[doc.decision_id]
        target = out / file
        before = file_sha256(target)
        if before != recorded:
            raise InputError(f"{target}: the letter's SHA-256 is not the report index's: changed since the run")
        temp = target.with_name(f".{target.name}.review-{batch}.tmp")
        with open(temp, "wb") as handle:
            handle.write(pdf)
            handle.flush()
            os.fsync(handle.fileno())
        journal_entries[doc.decision_id] = {
            **by_id[doc.decision_id].to_log(), "applied_at": stamp, "batch": batch, **source, "file": file,
            "sha256_before": before, "sha256_after": file_sha256(temp), "temp": temp.relative_to(out).as_posix()}
    return {"batch": batch, "entries": [journal_entries[r.id] for r in new]}


def finish_journal(out: Path) -> int:
    """Finish the batch an interrupted ``review apply`` left in its journal; returns its entries (0: none)."""
    path = Path(out) / review.JOURNAL
    if not path.exists():
        return 0
    journal = json.loads(path.read_text(encoding="utf-8"))
    _finish(Path(out), journal)
    return len(journal["entries"])


def _log_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "temp"}


def _finish(out: Path, journal: Mapping[str, Any]) -> None:
    """Steps 3 and 4 of the module's docstring; each is skipped where it is already done."""
    log = out / review.LOG
    done = {review.Resolution.from_log(e).key() for e in review.read_log(log, repair=True)}
    for position, entry in enumerate(journal["entries"]):
        target, temp = out / entry["file"], out / entry["temp"]
        if file_sha256(target) != entry["sha256_after"]:
            if not temp.exists():
                raise InputError(f"{target}: neither the reviewed letter nor its temporary file is there; the "
                                 f"batch {journal['batch']} cannot be finished")
            os.replace(temp, target)
            _fsync_dir(target.parent)
        _step("renamed", position)
        if review.Resolution.from_log(entry).key() not in done:
            review.append_entry(log, _log_entry(entry))
        _step("logged", position)
    _update_index_and_manifest(out, journal)
    (out / review.JOURNAL).unlink(missing_ok=True)
    _fsync_dir(out)


def _update_index_and_manifest(out: Path, journal: Mapping[str, Any]) -> None:
    changed = {e["id"]: e["sha256_after"] for e in journal["entries"]}
    index_path = out / mf.REPORT_INDEX
    rows = report_index.read_index(index_path).to_pylist()
    for row in rows:
        if row["id"] in changed:
            row["sha256"], row["needs_review"] = changed[row["id"]], False
    count = report_index.write_index([report_index.entries_table(rows)], index_path)
    _step("index", 0)
    manifest_path = out / mf.MANIFEST
    old_bytes = manifest_path.read_bytes()
    manifest = json.loads(old_bytes)
    index = {**mf.describe_file(index_path), "rows": count}
    entries = review.read_log(out / review.LOG)
    log = {**mf.describe_file(out / review.LOG), "entries": len(entries)}
    outputs = manifest["outputs"]
    if outputs.get(mf.REPORT_INDEX) == index and outputs.get(review.LOG) == log:
        return  # a kill after the new manifest was written: nothing left to do
    number = mf.revision(manifest)
    link = mf.archive_manifest(out, old_bytes, number)
    _step("archived", 0)
    resolved = review.latest(entries)
    manifest["outputs"] = {**outputs, mf.REPORT_INDEX: index, review.LOG: log}
    manifest["chain"] = {"revision": number + 1, "previous": link}
    manifest["reviews"] = {
        "log": review.LOG, "entries": len(entries), "resolved": len(resolved),
        "accepted": sum(r.action == "accept" for r in resolved.values()),
        "overridden": sum(r.action == "override" for r in resolved.values()),
        "last_batch": journal["batch"], "last_applied_at": journal["entries"][0]["applied_at"],
    }
    write_json_atomic(manifest_path, manifest)
    _step("manifest", 0)
