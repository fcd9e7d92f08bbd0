"""The five steps of the limelight flow (flows/pipeline.py composes them), and what they pass on.

1. :func:`validate` -> :class:`Validated`: the config, devices and render pool, a writable ``--out``,
   the inputs checked (streamed; an input-level problem stops the run before anything is started).
2. :func:`plan` -> :class:`Planned`: the decisions selected and cut into shards, the cluster checked, the
   checksums, the run to resume (or the complete one: the flow returns its summary), the run's info
   and its staging folder.
3. :func:`explain` -> :class:`Explained`: the subflow on the Dask workers (flows/work.py), which explains
   the shards and renders each shard's report batches as it finishes; then the account of every selected
   decision (reported, failed or not reached), ``failures.parquet`` and the merged explanations, staged.
4. :func:`render` -> :class:`Rendered`: in the flow process, what is left to render once the workers are
   done: only the finished reports kept, the report index, the run summary PDF.
5. :func:`publish`: the staged outputs into the output folder, the manifest last (``explain`` mode: the
   one Parquet file); then, outside :func:`staging_guard`, :func:`summarize` makes the Prefect artifacts
   and the flow's return value.

:func:`staging_guard` decides what a failure of steps 3-5 leaves behind: nothing for a problem to fix,
the staging folder (and its records) for anything else, so rerunning the same command resumes the run.
The Prefect tasks the steps call are in flows/prefect_tasks.py; output-folder helpers in flows/output.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.cluster import RENDER_RESOURCE, DevicePlan, check_cluster, resolve_devices, task_runner, with_render_pool
from flows.drift import Drift, check_baseline, drift_task, report_drift
from flows.output import (
    Mode,
    already_complete,
    audit_trail,
    cleanup,
    failures_table,
    in_order,
    keep_only_reports,
    not_reached_table,
    prepare_out,
    probe_writable,
    returned_review,
    run_markdown,
    top_first_reasons,
    worker_table,
)
from flows.prefect_tasks import (
    Selection,
    checksums_task,
    load_config_task,
    merge_task,
    plan_task,
    protected_step,
    quality_task,
    summary_task,
    validate_inputs,
)
from flows.runtime import scheduled_run_date
from flows.shared_disk import check_shared_folder
from flows.work import ALLOWED_FAILURES, DASK_LOG_LENGTH, Plan, ShardOutputs, explain_shards, hand_over
from tasks.errors import LimelightError
from tasks.explain.worker import Failure
from tasks.inputs.config import Config
from tasks.inputs.data import DecisionsIndex
from tasks.inputs.schedule import night_sha256, parse_run_date
from tasks.io import file_sha256, write_table_atomic
from tasks.plan.shards import Shard
from tasks.report import index as report_index
from tasks.report.pdf_structure import PDF_FINISHING
from tasks.report.review import QUEUE, write_queue
from tasks.report.summary_lists import SUMMARY_LAYOUT
from tasks.run import manifest as mf
from tasks.run.deadline import parse_deadline
from tasks.run.info import RunInfo
from tasks.run.ledger import Ledger
from tasks.run.state import Found, effective_settings, find_run, run_identity, write_state


def renderer_available() -> bool:
    """Whether the report step (tasks/report/render.py) is installed; without it runs still produce explanations."""
    return importlib.util.find_spec("tasks.report.render") is not None


@dataclass(frozen=True)
class Request:
    """The flow's parameters, as given (flows/pipeline.py documents them)."""

    config_path: str
    out: str
    devices: str | None
    cluster: str | None
    limit: int | None
    ids_file: str | None
    mode: Mode
    run_date: str | None
    deadline: str | None
    best_effort: bool
    trigger: str
    started_by: str | None
    render_workers: int | None
    baseline: str | None = None  # --baseline MANIFEST (flows/drift.py)


# --- 1. validate ---------------------------------------------------------------------------------


@dataclass
class Validated:
    """What the validate step established: good inputs, a writable output, where the work runs."""

    config: Config
    devices: DevicePlan  # the device workers and the render pool (a cluster is checked by the plan step)
    render: bool  # customer reports and the run summary are rendered
    out: str  # --out with {date} filled in
    run_date: str | None  # the night explained: given, or a scheduled run's (YYYY-MM-DD)
    deadline: datetime | None
    started: datetime
    clock: float  # time.perf_counter() at the start, for the run's total seconds
    index: DecisionsIndex
    row_failures: dict[int, str]  # position -> reason: rows that fail alone
    warnings: list[str]


def validate(request: Request) -> Validated:
    """Load the config, resolve devices and render pool, probe ``--out``, check the inputs (streamed)."""
    logger = get_run_logger()
    clock = time.perf_counter()
    started = mf.utc_now()
    warnings: list[str] = []
    run_date = request.run_date or scheduled_run_date()
    if run_date:
        run_date = parse_run_date(run_date).isoformat()
        logger.info("run_date %s: explaining that day's decisions", run_date)
    deadline = parse_deadline(request.deadline, started) if request.deadline else None
    check_baseline(request.baseline)

    config = load_config_task(request.config_path)
    devices = resolve_devices(request.devices or config.run.devices, request.cluster, config.run.torch_threads)
    rendering = request.mode == "run" and config.report.enabled
    if rendering and not renderer_available():
        warnings.append("the report step (tasks/report/render.py) is not installed: no PDFs rendered")
        logger.warning(warnings[-1])
        rendering = False
    pool = request.render_workers if request.render_workers is not None else config.run.render_workers
    devices = with_render_pool(devices, pool if rendering else 0, config.run.torch_threads)
    out = request.out.replace("{date}", run_date or started.date().isoformat())
    probe_writable(out, request.mode)
    index, row_failures = validate_inputs(config, require_report_columns=rendering)
    _preflight(config, out, index.num_rows if request.limit is None else min(request.limit, index.num_rows),
               rendering)
    return Validated(config=config, devices=devices, render=rendering, out=out, run_date=run_date,
                     deadline=deadline, started=started, clock=clock, index=index, row_failures=row_failures,
                     warnings=warnings)


def _preflight(config: Config, out: str, decisions: int, rendering: bool) -> None:
    """Model feature names, report files and free disk, before anything is staged (tasks/report/preflight.py)."""
    from tasks.report.preflight import preflight_checks

    preflight_checks(config, out, decisions, render=rendering)


# --- 2. plan -------------------------------------------------------------------------------------


@dataclass
class Planned:
    """The run the plan step set up: its shards, where they run, its info and staging folder."""

    selection: Selection
    devices: DevicePlan  # checked against the cluster, when there is one
    run: RunInfo
    identity: str  # of the inputs and settings, for resuming ("" when --out is named after a new run id)
    out: Path  # resolved, {run_id} filled in
    staging: Path
    created: list[Path]  # folders created for the staging folder (removed again by a failure to fix)
    resumed: bool  # the staging folder is an earlier attempt's
    warnings: list[str]


def plan(request: Request, checked: Validated) -> Planned | dict[str, Any]:
    """Select and shard the decisions, check the cluster, take the checksums, find an earlier attempt to resume
    and stage the run; or return the summary of the complete run that ``--out`` already holds."""
    logger = get_run_logger()
    config, mode, out, warnings = checked.config, request.mode, checked.out, list(checked.warnings)
    selection = plan_task(config, checked.index, request.limit, request.ids_file, checked.run_date,
                          checked.row_failures)
    devices = checked.devices
    if devices.kind == "cluster":
        assert devices.address is not None
        devices = check_cluster(devices.address)
        if checked.render and not devices.render_workers:
            warnings.append(f"cluster {devices.address}: no worker offers {RENDER_RESOURCE}; reports render on any "
                            f"worker (start CPU workers with --resources {RENDER_RESOURCE}=1 for a render pool)")
            logger.warning(warnings[-1])
    model_sha, decisions_sha, reference_sha = checksums_task(config)
    if checked.run_date:  # a night of a hive-partitioned dataset is its own partition: later nights leave it unchanged
        decisions_sha = night_sha256(checked.index.files, config, checked.run_date) or decisions_sha
    checksums = {"config": config.source_sha256 or "", "model": model_sha, "decisions": decisions_sha,
                 "reference": reference_sha}

    resumable = "{run_id}" not in out  # a folder named after a new run id is never an earlier run's
    found = Found()
    identity = ""
    if resumable:
        out_path = Path(out).expanduser().resolve()
        identity = run_identity(mode=mode, checksums=checksums, selection=selection.selected,
                                extra={"render": checked.render, **effective_settings(config)})
        found = find_run(out_path if mode == "run" else out_path.parent, identity=identity, mode=mode,
                         target=out_path)
        if found.manifest is not None and found.staging is None:
            logger.info("run %s of these inputs is already complete in %s", found.manifest["run_id"], out_path)
            return already_complete(found.manifest, out_path)
    run = found.run or mf.build_run_info(
        config, run_id=mf.new_run_id(checked.started), started=checked.started, model_sha256=model_sha,
        decisions_sha256=decisions_sha, reference_sha256=reference_sha,
    )
    out_path = Path(out.replace("{run_id}", run.run_id)).expanduser().resolve()
    folder, created = prepare_out(out_path, mode)
    if devices.kind == "cluster":  # workers write into the staging folder: they must share it (flows/shared_disk.py)
        check_shared_folder(devices.address, folder, created)  # type: ignore[arg-type]
    staging = found.staging or mf.staging_dir(folder, run.run_id)
    if found.staging is None:
        staging.mkdir()
        write_state(staging, identity=identity or run.run_id, mode=mode, target=str(out_path), run=run)
    else:
        logger.info("resuming run %s from %s", run.run_id, staging)
    logger.info("run %s: %d decisions (%d failed at input) in %d shards on %s", run.run_id, len(selection.selected),
                len(selection.input_failures), len(selection.shards), devices.describe())
    return Planned(selection=selection, devices=devices, run=run, identity=identity, out=out_path, staging=staging,
                   created=created, resumed=found.staging is not None, warnings=warnings)


@contextlib.contextmanager
def staging_guard(planned: Planned) -> Iterator[None]:
    """Around explain, render and publish: a problem to fix (a LimelightError: its inputs change, so nothing can
    be resumed) removes the staging folder; any other failure keeps it once it holds a record of finished work,
    so rerunning the same command resumes the run."""
    try:
        yield
    except LimelightError:
        cleanup(planned.staging, planned.created)
        raise
    except BaseException:
        if not planned.resumed and not any((planned.staging / "records").glob("*.json")):
            cleanup(planned.staging, planned.created)
        raise


# --- 3. explain ----------------------------------------------------------------------------------


@dataclass
class Explained:
    """The explain step's account: every selected decision reported, failed or not reached; staged files."""

    outputs: ShardOutputs
    failures: list[Failure]
    not_reached: list[str]  # in selection order
    accounting: dict[str, Any]  # in = reported + failed + not_reached (tasks/run/ledger.py)
    review_ids: pa.Array  # in selection order (the flow returns the first RETURNED_REVIEW_IDS: flows/output.py)
    explanations: Path  # merged, in the staging folder
    failures_file: Path  # failures.parquet, in the staging folder
    not_reached_file: Path  # not-reached.parquet, in the staging folder
    rows: int  # explanation rows
    counts: dict[str, int]  # the run summary's count keys (tasks/report/summary.py) and the execution's


def explain(request: Request, checked: Validated, planned: Planned) -> Explained:
    """Explain the shards on the Dask workers, rendering their reports as they finish (flows/work.py); then
    account for every decision, write ``failures.parquet`` and merge the explanations, staged."""
    config, devices, selection = checked.config, planned.devices, planned.selection
    runner = task_runner(devices, config.run.torch_threads)
    ledger = Ledger(len(selection.selected), len(selection.input_failures), len(selection.planned))
    index, positions = checked.index, selection.planned
    work_plan = Plan(selection.shards, lambda shard: _planned_ids(index, positions, shard), ledger)
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.admin.low-level-log-length": DASK_LOG_LENGTH}):
        outputs = explain_shards.with_options(task_runner=runner)(
            config, hand_over(work_plan), planned.run, str(planned.staging), checked.render,
            max(devices.workers, 1), checked.deadline, request.best_effort,
            render_resource=devices.kind != "cluster" or devices.render_workers > 0,
            render_batch=selection.sizes.render_batch, render_workers=devices.render_workers,
            devices_render=devices.kind != "cluster", render_prior_s=devices.render_prior_s(config.run.torch_threads))
    return _account(checked, planned, outputs, ledger.close())


def _planned_ids(index: DecisionsIndex, positions: np.ndarray | range, shard: Shard) -> list[str]:
    """The ids of a shard's decisions (its slice of the planned selection), in order."""
    rows = positions[shard.first : shard.first + shard.size]
    return [str(i) for i in index.ids.take(pa.array(rows, pa.int64())).to_pylist()]


def _account(checked: Validated, planned: Planned, outputs: ShardOutputs, accounting: dict[str, Any]) -> Explained:
    """The failures and not-reached files, the merged explanations and the counts. ``accounting`` was kept as
    the work ended (tasks/run/ledger.py): no list or set of every decision id is built here."""
    config, index, selection = checked.config, checked.index, planned.selection
    results = outputs.results
    if not accounting["holds"]:
        get_run_logger().error("accounting does not hold: %s", accounting["problem"])
    id_at = {p: str(index.ids[p].as_py()) for p in selection.input_failures}
    failures: list[Failure] = [(id_at[p], "input", reason) for p, reason in selection.input_failures.items()]
    failures += [f for r in results for f in r.failures]
    failures += outputs.render_failures
    failures += [(_planned_ids(index, selection.planned, s)[0], "worker", error) for s, error in outputs.worker_failed]
    unreached = [i for s in outputs.unexplained for i in _planned_ids(index, selection.planned, s)]
    unreached += outputs.unrendered
    selected_ids = None  # the selection's ids in order: only to order the (few) failures and not-reached ids
    if failures or unreached:
        selected_ids = index.ids.take(pa.array(np.asarray(selection.selected, np.int64))).combine_chunks()
    not_reached = in_order(unreached, selected_ids) if selected_ids is not None else []
    exclude = {f[0] for f in outputs.render_failures} | set(outputs.unrendered)  # explained, not reported
    review_ids = outputs.review_ids
    if exclude and len(review_ids):
        kept = pc.invert(pc.is_in(review_ids, value_set=pa.array(sorted(exclude), pa.string())))
        review_ids = review_ids.filter(kept)
    merged = planned.staging / mf.EXPLANATIONS
    rows = merge_task(results, str(merged), config.data.id_column, planned.run, exclude)
    failed_path = planned.staging / mf.FAILURES
    write_table_atomic(failures_table(failures, config.data.id_column, selected_ids), failed_path)
    unreached_path = planned.staging / mf.NOT_REACHED
    write_table_atomic(not_reached_table(not_reached, config.data.id_column), unreached_path)
    counts = {
        "decisions_in": len(selection.selected),
        "reported": accounting["reported"],
        "failed": accounting["failed"],
        "not_reached": accounting["not_reached"],
        "reports_made": outputs.reports.num_rows,
        "needs_review": len(review_ids),
        "shards": len(selection.shards),
        "workers": planned.devices.workers,
    }
    return Explained(outputs=outputs, failures=failures, not_reached=not_reached, accounting=accounting,
                     review_ids=review_ids, explanations=merged, failures_file=failed_path,
                     not_reached_file=unreached_path, rows=rows, counts=counts)


def compare_with_baseline(request: Request, checked: Validated, planned: Planned, explained: Explained) -> Drift:
    """The run's profile and its comparison with the baseline (flows/drift.py); nothing in ``explain`` mode."""
    if request.mode != "run":
        return Drift()
    return drift_task(str(explained.explanations), checked.config, request.out, str(planned.out),
                      mf.iso(checked.started), checked.run_date, request.baseline)


# --- 4. render -----------------------------------------------------------------------------------


@dataclass
class Rendered:
    """What the render step staged, in publishing order (``names``) and as the manifest describes it."""

    names: list[str]
    outputs: dict[str, Any]
    quality: dict[str, Any] | None = None  # the run's quality figures, read with the summary (else: publish reads)
    protected: dict[str, Any] | None = None  # a run with protected features: their figures (manifest "protected")


def render(checked: Validated, planned: Planned, explained: Explained, drift: Drift) -> Rendered:
    """Keep only the finished reports (the workers rendered them), write the report index, render the summary
    (with the comparison with the baseline, when there is one: ``drift``)."""
    if not checked.render:
        return Rendered([], {})
    staging, reports = planned.staging, explained.outputs.reports
    keep_only_reports(staging, reports.column("file"))
    index_rows = report_index.write_index([reports], staging / mf.REPORT_INDEX)
    queue_rows = write_queue(explained.explanations, reports, checked.config.data.id_column, staging / QUEUE)
    protected, protected_outputs = protected_step(checked.config, explained.explanations, staging)
    quality = summary_task(str(explained.explanations), explained.counts, [], checked.config, planned.run,
                           str(staging / mf.SUMMARY), SUMMARY_LAYOUT, str(explained.failures_file), protected,
                           drift.comparison)
    return Rendered(
        names=[mf.REPORTS, mf.REPORT_INDEX, QUEUE, *protected_outputs, mf.SUMMARY],
        protected=protected,
        outputs={
            **protected_outputs,
            mf.SUMMARY: {**mf.describe_file(staging / mf.SUMMARY), "layout": SUMMARY_LAYOUT},
            mf.REPORT_INDEX: {**mf.describe_file(staging / mf.REPORT_INDEX), "rows": index_rows},
            QUEUE: {**mf.describe_file(staging / QUEUE), "rows": queue_rows},  # docs/review.md
            mf.REPORTS: {"index": mf.REPORT_INDEX, "count": index_rows, "layout": checked.config.report.layout},
        },
        quality=quality,
    )


# --- 5. publish ----------------------------------------------------------------------------------


def _report_sources(config: Config) -> dict[str, str]:
    from tasks.report.text import report_sources

    return report_sources(config)


def publish(request: Request, checked: Validated, planned: Planned, explained: Explained,
            rendered: Rendered, drift: Drift) -> dict[str, str]:
    """Publish the staged outputs into ``--out``, the manifest last; returns name -> published path.
    ``explain`` mode publishes the explanations file (and its failures beside it, if any)."""
    config, run, staging, out = checked.config, planned.run, planned.staging, planned.out
    merged, failures, results = explained.explanations, explained.failures, explained.outputs.results
    if request.mode == "explain":
        merged.replace(out)
        published = {mf.EXPLANATIONS: str(out)}
        for name, staged, count in ((mf.FAILURES, explained.failures_file, len(failures)),
                                    (mf.NOT_REACHED, explained.not_reached_file, len(explained.not_reached))):
            if count:  # beside the explanations file: OUT.failures.parquet, OUT.not-reached.parquet
                target = out.with_name(f"{out.stem}.{name}")
                staged.replace(target)
                published[name] = str(target)
        cleanup(staging, [])
        return published
    names = [mf.EXPLANATIONS, mf.FAILURES, mf.NOT_REACHED, *rendered.names]
    described: dict[str, Any] = {mf.EXPLANATIONS: {**mf.describe_file(merged), "rows": explained.rows},
                                 mf.FAILURES: {**mf.describe_file(explained.failures_file), "rows": len(failures)},
                                 mf.NOT_REACHED: {**mf.describe_file(explained.not_reached_file),
                                                  "rows": len(explained.not_reached)},
                                 **rendered.outputs}
    ids_file, devices, sizes = request.ids_file, planned.devices, planned.selection.sizes
    execution = mf.Execution(
        devices=request.devices or config.run.devices, cluster=request.cluster, workers=devices.workers,
        render_workers=devices.render_workers, shards=len(planned.selection.shards),
        shard_size=sizes.shard_size, render_batch=sizes.render_batch,
        torch_threads=config.run.torch_threads, limit=request.limit,
        ids_file=str(Path(ids_file).resolve()) if ids_file else None,
        ids_file_sha256=file_sha256(ids_file) if ids_file else None,
        shards_per_worker=dict(sorted(Counter(f"{r.worker} ({r.device})" for r in results).items())),
    )
    quality = rendered.quality if rendered.quality is not None else quality_task(str(merged), config)
    manifest = mf.build_manifest(
        config, run, finished=mf.utc_now(), execution=execution,
        counts={**explained.counts, "explanation_rows": explained.rows}, review_ids=explained.review_ids,
        review_source=mf.EXPLANATIONS, outputs=described, extra={**audit_trail(
            identity=planned.identity, trigger=request.trigger, started_by=request.started_by,
            run_date=checked.run_date, started=checked.started, accounting=explained.accounting, failures=failures,
            not_reached=len(explained.not_reached), deadline=checked.deadline, best_effort=request.best_effort,
            outputs=explained.outputs, resumed=planned.resumed,
        ), "quality": quality, **({"protected": rendered.protected} if rendered.protected else {}),
        "report_sources": _report_sources(config) if checked.render else None,
        **({"pdf_finishing": PDF_FINISHING} if checked.render else {}),
        "drift_profile": drift.profile, **({"drift": drift.comparison} if drift.comparison else {})},
    )
    mf.publish(staging, out, names, manifest, keep_staging=bool(explained.not_reached))
    return {name: str(out / name) for name in [*names, mf.MANIFEST]}


def summarize(checked: Validated, planned: Planned, explained: Explained, published: dict[str, str],
              drift: Drift) -> dict[str, Any]:
    """Once published: the run's Prefect artifacts (the drift's too), and the flow's return value."""
    outputs, run, counts, devices = explained.outputs, planned.run, explained.counts, planned.devices
    results = outputs.results
    seconds = {
        "workers_start": outputs.cluster_seconds,
        "explain": outputs.explain_seconds,
        "render": outputs.render_seconds,
        "total": time.perf_counter() - checked.clock,
    }
    top = top_first_reasons(published[mf.EXPLANATIONS])
    create_markdown_artifact(
        key="limelight-run",
        markdown=run_markdown(run, counts, devices, seconds, published, explained.review_ids, top),
        description=f"limelight run {run.run_id}",
    )
    create_table_artifact(key="limelight-workers", table=worker_table(results),
                          description="decisions explained per worker")
    explained_here = sum(r.decisions for r in results)
    return {
        "run_id": run.run_id,
        "counts": counts,
        "accounting": explained.accounting,
        **returned_review(explained.review_ids),
        "outputs": published,
        "devices": devices.describe(),
        "render_workers": devices.render_workers,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "decisions_per_second": round(explained_here / outputs.explain_seconds, 2) if outputs.explain_seconds
        else None,
        "workers": worker_table(results),
        "rendered_by": outputs.rendered_by,
        "warnings": [*planned.warnings, *report_drift(drift, run.run_id)],
        "estimate": outputs.estimate,
        "stopped_at_deadline": outputs.stopped_at_deadline,
        "resumed": {"shards": outputs.reused_shards, "render_batches": outputs.reused_batches}
        if planned.resumed else None,
    }
