"""What a run leaves behind, outside the Prefect tasks: its output folder and the records of what happened.

- the output folder: :func:`probe_writable` (before any work), :func:`prepare_out` (the folder that receives
  the staging folder), :func:`keep_only_reports` (only finished reports are published), :func:`cleanup`;
- ``failures.parquet`` (:func:`failures_table`), ``not-reached.parquet`` (:func:`not_reached_table`) and the
  manifest's audit trail (:func:`audit_trail`);
- the Prefect artifacts' content (:func:`run_markdown`, :func:`worker_table`);
- the summary of a run the output folder already holds, complete (:func:`already_complete`).

The steps of the flow that use them: flows/steps.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.cluster import DevicePlan
from flows.work import ShardOutputs
from tasks.errors import InputError
from tasks.explain.worker import Failure, ShardResult
from tasks.io import release_unused_memory
from tasks.report import index as report_index
from tasks.run import manifest as mf
from tasks.run.info import RunInfo

#: What a run writes: a folder of explanations, reports, summary, failures and manifest, or (``explain``)
#: one explanations Parquet file.
Mode = Literal["run", "explain"]


def probe_writable(out: str, mode: Mode) -> None:
    """Fail before any work when the output cannot be written (nothing is created here)."""
    plain = "{" not in out
    path = Path(out.split("{", 1)[0] or ".").expanduser().absolute()
    if mode == "explain" and plain:
        if path.is_dir():
            raise InputError(f"--out {out}: is a folder; explain writes one Parquet file")
        path = path.parent
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a folder" if existing == path else f"{existing} is not a folder"
        raise InputError(f"--out {out}: {what}")
    try:
        handle, name = tempfile.mkstemp(prefix=".limelight-probe-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise InputError(f"--out {out}: cannot write in {existing} ({error.strerror or error})") from None


def prepare_out(out: Path, mode: Mode) -> tuple[Path, list[Path]]:
    """The folder that receives the staging folder; returns it and the folders created (for cleanup)."""
    folder = out if mode == "run" else out.parent
    if mode == "run" and out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if mode == "explain" and out.is_dir():
        raise InputError(f"--out {out}: is a folder; explain writes one Parquet file")
    created = []
    for parent in [folder, *folder.parents][::-1]:
        if not parent.exists():
            created.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return folder, created[::-1]


def cleanup(staging: Path, created: list[Path]) -> None:
    """Remove the staging folder, then the folders created for it (deepest first) that are still empty."""
    shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first; only if still empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def run_markdown(run: RunInfo, counts: dict[str, int], plan: DevicePlan, seconds: dict[str, float],
              outputs: dict[str, str], review: pa.Array, top: list[tuple[str, int]]) -> str:
    """The ``limelight-run`` artifact: counts, timings, outputs, the top first reasons, the first review ids."""
    rate = counts["reported"] / seconds["explain"] if seconds["explain"] > 0 else 0.0
    lines = [
        f"# limelight run `{run.run_id}`",
        "",
        f"- **Decisions:** {counts['decisions_in']} in, {counts['reported']} reported, {counts['failed']} failed, "
        f"{counts['not_reached']} not reached ({counts['shards']} shards on {plan.describe()})",
        f"- **Needing human review** (low fidelity, prediction gap or unstable top-k): {counts['needs_review']}",
        f"- **Reports:** {counts['reports_made']}",
        f"- **Engine:** {run.engine}, {run.num_samples} samples, top {run.top_k}, seed {run.seed}",
        f"- **Explanation time:** {seconds['explain']:.1f} s ({rate:.1f} decisions/s); total {seconds['total']:.1f} s",
        "",
        "## Outputs",
        *[f"- {name}: `{path}`" for name, path in outputs.items()],
        "",
        "## Most frequent top factor",
        *[f"- {feature}: {count}" for feature, count in top],
    ]
    if len(review):
        shown = ", ".join(f"`{i}`" for i in review.slice(0, 20).to_pylist())
        more = f" and {len(review) - 20} more" if len(review) > 20 else ""
        lines += ["", "## Review list", shown + more]
    return "\n".join(lines) + "\n"


def worker_table(results: list[ShardResult]) -> list[dict[str, Any]]:
    """Shards, decisions and seconds per worker (the ``limelight-workers`` artifact, the returned summary)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(r.worker, {"worker": r.worker, "device": r.device, "shards": 0, "decisions": 0,
                                         "seconds": 0.0})
        row["shards"] += 1
        row["decisions"] += r.decisions
        row["seconds"] += r.seconds
    for row in rows.values():
        row["decisions_per_s"] = round(row["decisions"] / row["seconds"], 2) if row["seconds"] else None
        row["seconds"] = round(row["seconds"], 2)
    return sorted(rows.values(), key=lambda row: row["worker"])


def _selection_order(ids: pa.Array, selected_ids: pa.Array | None) -> list[int]:
    """The permutation that puts ``ids`` in the order of the selection (stable: repeats together, ids not in the
    selection last). The lookup is built over ``ids``, the few: a million selected decisions are scanned once."""
    if selected_ids is None:
        return list(range(len(ids)))
    hits = pc.indices_nonzero(pc.is_in(selected_ids, value_set=ids))
    place: dict[str, int] = {}  # id -> its first position in the selection
    for position, value in zip(hits.to_pylist(), selected_ids.take(hits).to_pylist(), strict=True):
        place.setdefault(value, position)
    values, unplaced = ids.to_pylist(), len(selected_ids)
    return sorted(range(len(values)), key=lambda i: place.get(values[i], unplaced))


def in_order(ids: Sequence[str], selected_ids: pa.Array | None) -> list[str]:
    """``ids`` in the order of the selection."""
    if not ids:
        return []
    return [ids[i] for i in _selection_order(pa.array(ids, pa.string()), selected_ids)]


#: Explanation rows read at a time by :func:`top_first_reasons` (one row group of the merged file).
TOP_REASONS_BATCH_ROWS = 16_384


def top_first_reasons(explanations: str, count: int = 5) -> list[tuple[str, int]]:
    """The ``count`` features most often the first reason in an explanations file, with how often (ties: the
    first seen first). Streamed by batch: memory holds one batch, whatever the number of decisions, and Arrow's
    freed pages go back after each (in batches of 65,536 rows, kept, they raised the flow process's peak by 21 MB
    at the end of a million decisions: docs/performance.md, "Memory at scale")."""
    counts: dict[str, int] = {}
    handle = pq.ParquetFile(explanations)
    for batch in handle.iter_batches(batch_size=TOP_REASONS_BATCH_ROWS, columns=["feature", "rank"],
                                     use_threads=False):
        firsts = pc.filter(batch.column("feature"), pc.equal(batch.column("rank"), 1))
        for item in pc.value_counts(firsts).to_pylist():  # in the order first seen
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        del batch, firsts
        release_unused_memory()
    return sorted(counts.items(), key=lambda item: -item[1])[:count]  # stable: ties stay first seen first


def failures_table(failures: Sequence[Failure], id_column: str, selected_ids: pa.Array | None) -> pa.Table:
    """``failures.parquet``: one row per failed decision (id, stage, error), in the selection's order."""
    ids = pa.array([f[0] for f in failures], pa.string())
    order = _selection_order(ids, selected_ids)
    return pa.table({
        id_column: ids.take(pa.array(order, pa.int64())),
        "stage": pa.array([failures[i][1] for i in order], pa.string()),
        "error": pa.array([failures[i][2] for i in order], pa.string()),
    })


def not_reached_table(ids: Sequence[str], id_column: str) -> pa.Table:
    """``not-reached.parquet``: one row per decision a deadline left unreached (already in selection order)."""
    return pa.table({id_column: pa.array(ids, pa.string())})


def already_complete(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """The summary of a run this output folder already holds, complete, for the same inputs."""
    counts = manifest.get("counts", {})
    names = [n for n in (*manifest.get("outputs", {}), mf.MANIFEST) if (out / n).exists()]
    return {
        "run_id": manifest["run_id"], "counts": counts, **returned_review(report_index.review_ids(manifest, out)),
        "outputs": {name: str(out / name) for name in names}, "devices": "none (already complete)",
        "seconds": {"workers_start": 0.0, "explain": 0.0, "render": 0.0, "total": 0.0},
        "decisions_per_second": None, "workers": [], "accounting": manifest.get("accounting", {}),
        "already_complete": True,
        "warnings": [f"run {manifest['run_id']} of these inputs is already complete in {out}: nothing to do"],
    }


#: Review ids the flow returns at most (the first, in selection order); ``review_count`` counts them all. A million
#: decisions with 11% in review returned 114,410 ids, which Prefect copies on return: 15 MB at the end of the run.
RETURNED_REVIEW_IDS = 1_000


def returned_review(ids: pa.Array | list[str]) -> dict[str, Any]:
    """The flow's ``review_ids`` (the first :data:`RETURNED_REVIEW_IDS`) and ``review_count`` (all of them: the
    explanations file and the review queue hold the rest)."""
    first = ids.slice(0, RETURNED_REVIEW_IDS).to_pylist() if isinstance(ids, pa.Array) else ids[:RETURNED_REVIEW_IDS]
    return {"review_ids": first, "review_count": len(ids)}


def keep_only_reports(staging: Path, files: pa.Array | pa.ChunkedArray) -> None:
    """Remove from the staged reports what is not a finished report of this run (a batch cut at the deadline,
    a killed writer's temporary file), so the published folder holds exactly the index's reports. ``files``
    (the report index's column) are relative to ``staging`` (``reports/...``, in subfolders with a ``[report]
    layout``).

    One folder at a time: the index's files, sorted by folder in Arrow, give each folder's names as one slice,
    so no set or list of every report's path is built in Python (a million reports would hold hundreds of MB)."""
    folder = staging / mf.REPORTS
    folder.mkdir(parents=True, exist_ok=True)
    files = pa.chunked_array([files]) if isinstance(files, pa.Array) else files
    parents = pc.replace_substring_regex(files, pattern="/[^/]*$", replacement="")
    table = pa.table({"parent": parents, "file": files}).sort_by([("parent", "ascending"), ("file", "ascending")])
    starts: dict[str, tuple[int, int]] = {}
    offset = 0
    for parent, count in zip(*(c.to_pylist() for c in pc.value_counts(table.column("parent")).flatten()),
                             strict=True):
        starts[parent] = (offset, count)  # value_counts keeps the sorted column's order
        offset += count
    for directory, _, names in os.walk(folder, topdown=False):  # deepest first: files, then emptied folders
        relative = Path(directory).relative_to(staging).as_posix()
        first, count = starts.get(relative, (0, 0))
        indexed = set(table.column("file").slice(first, count).to_pylist())
        for name in names:
            if f"{relative}/{name}" not in indexed:
                os.unlink(os.path.join(directory, name))
        if directory != str(folder) and not os.listdir(directory):
            os.rmdir(directory)


def audit_trail(*, identity: str, trigger: str, started_by: str | None, run_date: str | None, started: datetime,
           accounting: dict[str, Any], failures: Sequence[Failure], not_reached: int,
           deadline: datetime | None, best_effort: bool, outputs: ShardOutputs, resumed: bool) -> dict[str, Any]:
    """The manifest's audit trail: who or what started the run, its identity, what ended how."""
    return {
        "identity": identity,
        "trigger": {"trigger": trigger, "started_by": started_by, "run_date": run_date,
                    "attempt_started_at": mf.iso(started)},
        "accounting": accounting,
        "failures": {"file": mf.FAILURES, "count": len(failures),
                     "by_stage": dict(sorted(Counter(f[1] for f in failures).items()))},
        "not_reached": {"file": mf.NOT_REACHED, "count": not_reached},  # the ids: in the file (manifest 3)
        "deadline": None if deadline is None else {
            "deadline": deadline.isoformat(), "best_effort": best_effort, "estimate": outputs.estimate,
            "stopped_at_deadline": outputs.stopped_at_deadline, "rates": outputs.rates,
        },
        "resumed": {"resumed": resumed, "shards_reused": outputs.reused_shards,
                    "render_batches_reused": outputs.reused_batches},
    }
