"""The run's facts (:class:`RunInfo`), its manifest, and publishing the staged outputs.

A run writes everything into a staging folder inside the output folder first; :func:`publish`
then renames each output into place (the reports folder as a whole) and writes ``manifest.json``
last, so a manifest next to the outputs means the run completed and describes exactly those files.
"""

from __future__ import annotations

import platform
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.errors import InputError
from tasks.inputs.config import Config, default_kernel_width
from tasks.io import file_sha256, replace_dir, tree_sha256, write_json_atomic
from tasks.run.info import RunInfo

#: 2: the reports are listed in REPORT_INDEX (tasks/report/index.py), the review ids in the explanations.
#: 3: the decisions not reached are listed in NOT_REACHED (before: inline, ``not_reached_ids``).
MANIFEST_VERSION = 3
EXPLANATIONS = "explanations.parquet"
REPORTS = "reports"
REPORT_INDEX = "reports.parquet"
SUMMARY = "summary.pdf"
FAILURES = "failures.parquet"
NOT_REACHED = "not-reached.parquet"
MANIFEST = "manifest.json"
STAGING_PREFIX = ".limelight-staging-"

#: Distributions whose versions every manifest records (what can change an explanation or a PDF).
PACKAGES = (
    "limelight", "torch", "numpy", "scipy", "scikit-learn", "lime", "pandas", "pyarrow", "prefect",
    "prefect-dask", "dask", "distributed", "pydantic", "weasyprint", "jinja2",
)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(started: datetime) -> str:
    """Sortable and unique: ``20261122T021500Z-3f9c2a1b``."""
    return f"{started.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions (read from metadata; nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_run_info(
    config: Config,
    *,
    run_id: str,
    started: datetime,
    model_sha256: str,
    decisions_sha256: str,
    reference_sha256: str,
) -> RunInfo:
    """The run's facts, built once in the flow process and passed to every worker and renderer."""
    explain = config.explain
    return RunInfo(
        run_id=run_id,
        generated_at=iso(started),
        config_sha256=config.source_sha256 or "",
        model_sha256=model_sha256,
        decisions_sha256=decisions_sha256,
        reference_sha256=reference_sha256,
        engine=explain.engine,
        num_samples=explain.num_samples,
        top_k=explain.top_k,
        kernel_width=float(explain.kernel_width or default_kernel_width(len(config.features))),
        feature_selection=explain.feature_selection,
        seed=explain.seed,
        explained_class=config.model.explain,
        min_fidelity=config.review.min_fidelity,
        versions=package_versions(),
        method=explain.effective_method,
    )


def input_checksums(config: Config) -> tuple[str, str]:
    """SHA-256 of the decisions and of the reference (a dataset folder hashes all its data files)."""
    return tree_sha256(config.data.decisions), tree_sha256(config.data.reference)


@dataclass
class Execution:
    """How the run was carried out (recorded, not part of what makes the outputs identical)."""

    devices: str
    cluster: str | None
    workers: int
    shards: int
    shard_size: int
    torch_threads: int
    limit: int | None = None
    ids_file: str | None = None
    ids_file_sha256: str | None = None
    shards_per_worker: dict[str, int] = field(default_factory=dict)
    render_workers: int = 0
    render_batch: int = 0


def build_manifest(
    config: Config,
    run: RunInfo,
    *,
    finished: datetime,
    execution: Execution,
    counts: Mapping[str, int],
    review_ids: Sequence[str],
    outputs: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    review_source: str | None = None,
) -> dict[str, Any]:
    """The manifest; ``extra`` adds the audit trail (trigger, identity, failures, deadline, ...).

    With ``review_source`` (the file whose ``needs_review`` rows list them) the manifest keeps the review
    list's count, not its ids, so its size does not grow with the number of decisions.
    """
    started = datetime.strptime(run.generated_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    from tasks.inputs.model import model_record

    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run.run_id,
        "started_at": run.generated_at,
        "finished_at": iso(finished),
        "duration_s": round((finished - started).total_seconds(), 1),
        "config": {"path": str(config.source) if config.source else None, "sha256": run.config_sha256},
        "model": model_record(config.model, run.model_sha256),  # format, runtime, the file's or files' SHA-256
        "inputs": {
            "decisions": {"path": str(config.data.decisions), "sha256": run.decisions_sha256},
            "reference": {"path": str(config.data.reference), "sha256": run.reference_sha256},
            "id_column": config.data.id_column,
        },
        "engine": {
            "engine": run.engine,
            "num_samples": run.num_samples,
            "top_k": run.top_k,
            "kernel_width": run.kernel_width,
            "feature_selection": run.feature_selection,
            "seed": run.seed,
            "explained_class": run.explained_class,
            "min_fidelity": run.min_fidelity,
            "memory_budget_mb": config.explain.memory_budget_mb,
        },
        "execution": {
            "devices": execution.devices,
            "cluster": execution.cluster,
            "workers": execution.workers,
            "render_workers": execution.render_workers,
            "shards": execution.shards,
            "shard_size": execution.shard_size,
            "render_batch": execution.render_batch,
            "torch_threads": execution.torch_threads,
            "limit": execution.limit,
            "ids_file": execution.ids_file,
            "ids_file_sha256": execution.ids_file_sha256,
            "shards_per_worker": execution.shards_per_worker,
        },
        "versions": run.versions,
        "counts": dict(counts),
        "review": {"min_fidelity": run.min_fidelity, "ids": list(review_ids)} if review_source is None else
        {"min_fidelity": run.min_fidelity, "count": len(review_ids), "source": review_source},
        "outputs": dict(outputs),
        "run": run.to_dict(),
        **dict(extra or {}),
    }


def not_reached_ids(manifest: Mapping[str, Any], folder: Path) -> list[str]:
    """The decisions a published run did not reach, in selection order: inline in manifests before version 3
    (``not_reached_ids``), else the id column of :data:`NOT_REACHED` beside the manifest."""
    if "not_reached_ids" in manifest:
        return [str(i) for i in manifest["not_reached_ids"]]
    import pyarrow.parquet as pq

    id_column = str(manifest["inputs"]["id_column"])
    path = Path(folder) / NOT_REACHED
    try:
        return [str(i) for i in pq.read_table(path, columns=[id_column]).column(id_column).to_pylist()]
    except (OSError, ValueError) as error:  # missing, unreadable, or without the id column
        raise InputError(f"{path}: cannot read column '{id_column}' ({error})") from None


def staging_dir(out: Path, run_id: str) -> Path:
    return Path(out) / f"{STAGING_PREFIX}{run_id}"


def check_sha256(path: Path, expected: str, what: str, actual: str | None = None) -> None:
    """An input must still be the bytes the run read: else one line naming it and both digests."""
    if not path.exists():
        raise InputError(f"{path}: {what} not found (the manifest names it)")
    actual = actual or tree_sha256(path)
    if actual != expected:
        raise InputError(f"{path}: {what} SHA-256 changed since the run ({actual[:16]}…, the manifest has "
                         f"{expected[:16]}…)")


def describe_file(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def publish(staging: Path, out: Path, names: Sequence[str], manifest: dict[str, Any] | None,
            keep_staging: bool = False) -> list[Path]:
    """Rename staged outputs into ``out`` (a folder replaces the old one whole), manifest last.

    Each rename is atomic; the staging folder is removed afterwards, unless ``keep_staging`` (a run
    stopped at its deadline keeps its records, so a rerun finishes the rest). A previous run's outputs
    that this run does not produce (e.g. ``reports/`` after ``explain``) are left alone.
    """
    published = []
    if manifest is not None:  # the old manifest goes first: it must never describe a mix of runs
        (Path(out) / MANIFEST).unlink(missing_ok=True)
    for name in names:
        source, target = Path(staging) / name, Path(out) / name
        if source.is_dir():
            replace_dir(source, target)
        else:
            source.replace(target)
        published.append(target)
    if manifest is not None:
        published.append(write_json_atomic(Path(out) / MANIFEST, manifest))
    if not keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    return published


# ---------------------------------------------------------------------------------------------- the chain

#: Earlier manifests of a run whose outputs changed after publication (human review), one file per revision.
HISTORY = "manifest-history"


def revision(manifest: Mapping[str, Any]) -> int:
    """0 for the manifest the run published; n after the n-th change (``chain.revision``)."""
    return int((manifest.get("chain") or {}).get("revision", 0))


def archive_manifest(out: Path, manifest_bytes: bytes, number: int) -> dict[str, str]:
    """Keep the manifest of revision ``number`` as ``manifest-history/manifest-<number>.json`` (atomically; the
    same bytes again if it is already there); returns the link the next revision records: file and SHA-256."""
    from tasks.io import write_bytes_atomic

    name = f"{HISTORY}/manifest-{number:04d}.json"
    target = Path(out) / name
    if not target.exists() or target.read_bytes() != manifest_bytes:
        write_bytes_atomic(target, manifest_bytes)
    return {"file": name, "sha256": file_sha256(target)}


def check_chain(manifest: Mapping[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Walk the chain back to the run's own manifest: every earlier revision must be there with the SHA-256 the
    next one records, of the same run and inputs, numbered down to 0. Returns the earlier manifests, newest first;
    a broken link is one :class:`InputError` line."""
    import json

    earlier, current = [], manifest
    while revision(current):
        link = (current.get("chain") or {}).get("previous") or {}
        path = Path(folder) / str(link.get("file", ""))
        if not link.get("file") or not path.is_file():
            raise InputError(f"{path}: the manifest of revision {revision(current) - 1} is missing (the chain "
                             "names it)")
        check_sha256(path, str(link.get("sha256")), f"manifest of revision {revision(current) - 1}")
        previous = json.loads(path.read_text(encoding="utf-8"))
        same = all(previous.get(key) == manifest.get(key) for key in ("run_id", "run", "inputs", "config", "counts"))
        if not same or revision(previous) != revision(current) - 1:
            raise InputError(f"{path}: not the previous revision of run {manifest.get('run_id')}")
        earlier.append(previous)
        current = previous
    return earlier
