"""The limelight flow: validate -> plan shards -> explain on the workers -> aggregate -> render -> publish.

Orchestration only: every step is a thin Prefect task around a plain function of ``tasks/``.
The flow process validates and plans (nothing is started when an input is bad), then a subflow with
the Dask task runner explains the shards (one ``DEVICE`` per task) and renders each shard's reports
as soon as its explanations exist; back in the flow process the parts are merged into
``explanations.parquet``, the run summary is rendered, and everything staged is published into the
output folder with the manifest last.

The CLI (flows/cli.py) runs this flow against one Prefect server (flows/server.py); it can also be
deployed (flows/deployments.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import pandas as pd
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from flows.cluster import RESOURCE, DevicePlan, check_cluster, resolve_devices, task_runner
from tasks import manifest as mf
from tasks.config import Config, load_config
from tasks.data import DecisionsIndex, read_reference, scan_decisions, select_positions
from tasks.errors import InputError, LimelightError
from tasks.io import file_sha256
from tasks.runinfo import RunInfo
from tasks.shard import Shard, ShardResult, explain_shard, merge_parts, plan_shards

Mode = Literal["run", "explain"]
#: Progress callbacks of the process that runs the flow (the CLI's progress bar): (stage, done, total).
ProgressHook = Callable[[str, int, int], None]
_HOOKS: list[ProgressHook] = []


@contextlib.contextmanager
def progress_hook(hook: ProgressHook) -> Iterator[None]:
    """Receive (stage, done, total) while a flow runs in this process."""
    _HOOKS.append(hook)
    try:
        yield
    finally:
        _HOOKS.remove(hook)


def _progress(stage: str, done: int, total: int) -> None:
    for hook in list(_HOOKS):
        hook(stage, done, total)


def _retry_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient I/O failures (a share that hiccups), never a problem the user must fix."""
    try:
        state.result()
    except LimelightError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


IO = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _retry_io}
NOT_CACHED = {"cache_policy": NO_CACHE, "persist_result": False}


def renderer_available() -> bool:
    """Whether the report step (tasks/render.py) is installed; without it runs still produce explanations."""
    return importlib.util.find_spec("tasks.render") is not None


# --- tasks in the flow process ------------------------------------------------------------------


@task(name="load-config", **IO, **NOT_CACHED)
def load_config_task(config_path: str) -> Config:
    return load_config(config_path)


@task(name="validate-inputs", **IO, **NOT_CACHED)
def validate_inputs(config: Config, require_report_columns: bool) -> DecisionsIndex:
    """Check decisions and reference (streamed; first problem raises); return the ids for planning."""
    index = scan_decisions(config, require_report_columns=require_report_columns)
    assert index is not None
    read_reference(config)
    get_run_logger().info("%d decisions in %d file(s) are valid", index.num_rows, len(index.files))
    return index


@task(name="plan-shards", **NOT_CACHED)
def plan_task(config: Config, index: DecisionsIndex, limit: int | None, ids_file: str | None) -> list[Shard]:
    positions = select_positions(index, limit, ids_file, config.data.id_column)
    return plan_shards(index, config.run.shard_size, positions)


@task(name="checksums", **IO, **NOT_CACHED)
def checksums_task(config: Config) -> tuple[str, str, str]:
    """SHA-256 of model, decisions and reference, for the manifest and the workers' cache key."""
    from tasks.model import model_sha256

    decisions, reference = mf.input_checksums(config)
    return model_sha256(config.model), decisions, reference


@task(name="merge-explanations", **IO, **NOT_CACHED)
def merge_task(results: list[ShardResult], target: str, id_column: str, run: RunInfo) -> int:
    metadata = {b"limelight.run": json.dumps(run.to_dict(), sort_keys=True).encode("utf-8")}
    return merge_parts(results, Path(target), id_column, metadata)


@task(name="render-summary", **NOT_CACHED)
def summary_task(
    explanations: str, counts: dict[str, int], review_ids: list[str], config: Config, run: RunInfo, target: str
) -> str:
    from tasks.render import render_run_summary

    frame = pd.read_parquet(explanations)
    return str(render_run_summary(frame, counts, review_ids, config, run, Path(target)))


# --- tasks on the workers -----------------------------------------------------------------------


@task(name="explain-shard", task_run_name="explain-{shard.name}", **IO, **NOT_CACHED)
def explain_task(config: Config, shard: Shard, run: RunInfo, staging: str) -> ShardResult:
    result = explain_shard(config, shard, run, staging)
    get_run_logger().info(
        "%s: %d decisions in %.1f s on %s (%s)", shard.name, result.decisions, result.seconds, result.device,
        result.worker,
    )
    return result


#: Reports per render task: small enough to spread a shard's reports over every worker.
RENDER_BATCH = 32


@task(name="render-reports", task_run_name="render-shard-{result.index:05d}-from-{start}", **IO, **NOT_CACHED)
def render_task(
    config: Config, run: RunInfo, result: ShardResult, reports_dir: str, start: int, stop: int
) -> list[Any]:
    """Render the customer reports of decisions ``[start, stop)`` of one shard, from its part files."""
    from tasks.render import render_customer_reports

    applicants = pd.read_parquet(result.applicants).iloc[start:stop]
    id_column = config.data.id_column
    rows = pd.read_parquet(result.part)
    rows = rows[rows[id_column].isin(set(applicants[id_column]))]
    return list(render_customer_reports(rows, applicants.reset_index(drop=True), config, run, Path(reports_dir)))


# --- the subflow that owns the Dask cluster -----------------------------------------------------


@dataclass
class ShardOutputs:
    results: list[ShardResult]
    reports: list[Any] = field(default_factory=list)
    cluster_seconds: float = 0.0  # starting the workers
    explain_seconds: float = 0.0  # from the workers being up to the last shard explained
    render_seconds: float = 0.0  # from then to the last report rendered


def _collect(futures: Sequence[Any], sizes: Sequence[int], stage: str, artifact: Any | None) -> list[Any]:
    """Wait for futures in completion order (failing fast), reporting progress in decisions; results in order."""
    total, done = sum(sizes), 0
    size_of = dict(zip(map(id, futures), sizes, strict=True))
    _progress(stage, 0, total)
    updates = 0
    for future in as_completed(list(futures)):
        future.result()  # raises the task's exception on failure
        done += size_of[id(future)]
        _progress(stage, done, total)
        if artifact is not None and (done * 50 // max(total, 1) > updates or done == total):
            updates = done * 50 // max(total, 1)
            update_progress_artifact(artifact, progress=100.0 * done / max(total, 1))
    return [future.result() for future in futures]


@flow(name="limelight-explain-shards", persist_result=False, log_prints=False)
def explain_shards(
    config: Config, shards: list[Shard], run: RunInfo, staging: str, render: bool
) -> ShardOutputs:
    """Fan the shards out to the workers (one DEVICE each), then render each shard's reports."""
    logger = get_run_logger()
    clock = time.perf_counter()
    runner = FlowRunContext.get().task_runner  # type: ignore[union-attr]
    if hasattr(runner, "client"):
        runner.client  # noqa: B018 - start the workers now, so the timings below are the work's own
    cluster_seconds = time.perf_counter() - clock
    progress = create_progress_artifact(progress=0.0, key="limelight-progress", description="shards explained")
    clock = time.perf_counter()
    with dask.annotate(resources={RESOURCE: 1}):
        explained = explain_task.map(unmapped(config), shards, unmapped(run), unmapped(staging))
    rendered, batches = [], []
    if render:
        reports_dir = str(Path(staging) / mf.REPORTS)
        # No resource: rendering needs no device; any worker takes a batch as soon as its shard is explained.
        for shard, future in zip(shards, explained, strict=True):
            for start in range(0, shard.size, RENDER_BATCH):
                stop = min(start + RENDER_BATCH, shard.size)
                rendered.append(render_task.submit(config, run, future, reports_dir, start, stop))
                batches.append(stop - start)
    results = _collect(explained, [s.size for s in shards], "explain", progress)
    explain_seconds = time.perf_counter() - clock
    logger.info("explained %d decisions in %d shards", sum(r.decisions for r in results), len(results))
    clock = time.perf_counter()
    reports = [report for batch in _collect(rendered, batches, "render", None) for report in batch]
    return ShardOutputs(results, reports, cluster_seconds, explain_seconds, time.perf_counter() - clock)


# --- the flow -----------------------------------------------------------------------------------


def _prepare_out(out: Path, mode: Mode) -> tuple[Path, list[Path]]:
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


def _cleanup(staging: Path, created: list[Path]) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first; only if still empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def _markdown(run: RunInfo, counts: dict[str, int], plan: DevicePlan, seconds: dict[str, float],
              outputs: dict[str, str], review: list[str], top: list[tuple[str, int]]) -> str:
    rate = counts["decisions_in"] / seconds["explain"] if seconds["explain"] > 0 else 0.0
    lines = [
        f"# limelight run `{run.run_id}`",
        "",
        f"- **Decisions explained:** {counts['decisions_in']} ({counts['shards']} shards on {plan.describe()})",
        f"- **Needing human review** (fidelity < {run.min_fidelity}): {counts['needs_review']}",
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
    if review:
        shown = ", ".join(f"`{i}`" for i in review[:20])
        more = f" and {len(review) - 20} more" if len(review) > 20 else ""
        lines += ["", "## Review list", shown + more]
    return "\n".join(lines) + "\n"


def _worker_table(results: list[ShardResult]) -> list[dict[str, Any]]:
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


@flow(name="limelight", persist_result=False, log_prints=False)
def limelight_flow(
    config_path: str,
    out: str,
    devices: str | None = None,
    cluster: str | None = None,
    limit: int | None = None,
    ids_file: str | None = None,
    mode: Mode = "run",
) -> dict[str, Any]:
    """Explain the configured decisions and publish explanations, reports, summary and manifest.

    ``mode="explain"`` writes only the explanations Parquet file at ``out``. ``{date}`` (UTC start date)
    and ``{run_id}`` in ``out`` are filled in, so scheduled runs can each write their own folder.
    """
    logger = get_run_logger()
    clock = time.perf_counter()
    started = mf.utc_now()
    warnings: list[str] = []

    config = load_config_task(config_path)
    plan = resolve_devices(devices or config.run.devices, cluster, config.run.torch_threads)
    render = mode == "run" and config.report.enabled
    if render and not renderer_available():
        warnings.append("the report step (tasks/render.py) is not installed: no PDFs rendered")
        logger.warning(warnings[-1])
        render = False
    index = validate_inputs(config, require_report_columns=render)
    shards = plan_task(config, index, limit, ids_file)
    if plan.kind == "cluster":
        assert plan.address is not None
        plan = check_cluster(plan.address)
    model_sha, decisions_sha, reference_sha = checksums_task(config)
    run = mf.build_run_info(
        config, run_id=mf.new_run_id(started), started=started, model_sha256=model_sha,
        decisions_sha256=decisions_sha, reference_sha256=reference_sha,
    )
    out = out.replace("{date}", started.date().isoformat()).replace("{run_id}", run.run_id)
    out_path = Path(out).expanduser().resolve()
    folder, created = _prepare_out(out_path, mode)
    staging = mf.staging_dir(folder, run.run_id)
    staging.mkdir()
    decisions = sum(s.size for s in shards)
    logger.info("run %s: %d decisions in %d shards on %s", run.run_id, decisions, len(shards), plan.describe())
    try:
        runner = task_runner(plan, config.run.torch_threads)
        outputs = explain_shards.with_options(task_runner=runner)(config, shards, run, str(staging), render)
        results = outputs.results
        review_ids = [i for r in results for i in r.review_ids]
        merged = staging / mf.EXPLANATIONS
        rows = merge_task(results, str(merged), config.data.id_column, run)
        # The run summary's count keys (tasks/render_summary.py) and the execution's; a failing shard fails
        # the run, so nothing is ever "failed" in a published run.
        counts = {
            "decisions_in": decisions,
            "reports_made": len(outputs.reports),
            "needs_review": len(review_ids),
            "failed": 0,
            "shards": len(shards),
            "workers": plan.workers,
        }
        if mode == "explain":
            merged.replace(out_path)
            published = {mf.EXPLANATIONS: str(out_path)}
            _cleanup(staging, [])
        else:
            names = [mf.EXPLANATIONS]
            described: dict[str, Any] = {mf.EXPLANATIONS: {**mf.describe_file(merged), "rows": rows}}
            if render:
                summary_counts = {k: counts[k] for k in ("decisions_in", "reports_made", "needs_review", "failed")}
                summary_task(str(merged), summary_counts, review_ids, config, run, str(staging / mf.SUMMARY))
                names += [mf.REPORTS, mf.SUMMARY]
                described[mf.SUMMARY] = mf.describe_file(staging / mf.SUMMARY)
                described[mf.REPORTS] = [
                    {"id": r.decision_id, "file": f"{mf.REPORTS}/{Path(r.path).name}", "sha256": r.sha256,
                     "needs_review": r.needs_review}
                    for r in outputs.reports
                ]
            execution = mf.Execution(
                devices=devices or config.run.devices, cluster=cluster, workers=plan.workers, shards=len(shards),
                shard_size=config.run.shard_size, torch_threads=config.run.torch_threads, limit=limit,
                ids_file=str(Path(ids_file).resolve()) if ids_file else None,
                ids_file_sha256=file_sha256(ids_file) if ids_file else None,
                shards_per_worker=dict(sorted(Counter(f"{r.worker} ({r.device})" for r in results).items())),
            )
            manifest = mf.build_manifest(
                config, run, finished=mf.utc_now(), execution=execution,
                counts={**counts, "explanation_rows": rows}, review_ids=review_ids,
                outputs=described,
            )
            mf.publish(staging, out_path, names, manifest)
            published = {name: str(out_path / name) for name in [*names, mf.MANIFEST]}
    except BaseException:
        _cleanup(staging, created)
        raise
    seconds = {
        "workers_start": outputs.cluster_seconds,
        "explain": outputs.explain_seconds,
        "render": outputs.render_seconds,
        "total": time.perf_counter() - clock,
    }
    firsts = pq.read_table(published[mf.EXPLANATIONS], columns=["feature"], filters=[("rank", "=", 1)])
    top = Counter(firsts.column("feature").to_pylist()).most_common(5)
    create_markdown_artifact(
        key="limelight-run", markdown=_markdown(run, counts, plan, seconds, published, review_ids, top),
        description=f"limelight run {run.run_id}",
    )
    create_table_artifact(key="limelight-workers", table=_worker_table(results),
                          description="decisions explained per worker")
    return {
        "run_id": run.run_id,
        "counts": counts,
        "review_ids": review_ids,
        "outputs": published,
        "devices": plan.describe(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "decisions_per_second": round(decisions / outputs.explain_seconds, 2) if outputs.explain_seconds else None,
        "workers": _worker_table(results),
        "warnings": warnings,
    }


