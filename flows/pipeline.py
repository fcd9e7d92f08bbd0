"""The limelight flow: validate -> plan shards -> explain on the workers -> aggregate -> render -> publish.

Orchestration only: every step is a thin Prefect task around a plain function of ``tasks/``.
The flow process validates and plans (nothing is started when an input is bad), then a subflow with
the Dask task runner explains the shards (one ``DEVICE`` per task) and renders each shard's reports
as soon as its explanations exist (one ``RENDER`` per batch: the render pool, flows/cluster.py); back
in the flow process the parts are merged into ``explanations.parquet``, the run summary is rendered,
and everything staged is published into the output folder with the manifest last.

Nothing is lost: every selected decision ends as a report (an explanation row in ``explain`` mode),
a row of ``failures.parquet`` (bad input row, the model failing on it, its report failing, or the
worker dying on it), or "not reached" when a deadline stopped the run; the manifest checks
``in = reported + failed + not_reached``. A killed run is resumed by rerunning the same command
(tasks/run/state.py).

The CLI (flows/cli.py) runs this flow against one Prefect server (flows/server.py); it can also be
deployed (flows/deployments.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from distributed import KilledWorker
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows.cluster import (
    RENDER_RESOURCE,
    RESOURCE,
    DevicePlan,
    check_cluster,
    resolve_devices,
    task_runner,
    with_render_pool,
)
from flows.runtime import progress as _progress
from flows.runtime import say as _say
from flows.runtime import scheduled_run_date
from tasks.errors import InputError, LimelightError
from tasks.explain.worker import Failure, ShardResult, explain_shard, merge_parts, one_line, prepare_worker
from tasks.inputs.config import Config, load_config
from tasks.inputs.data import DecisionsIndex, read_reference, scan_decisions, select_positions
from tasks.inputs.schedule import night_sha256, parse_run_date, select_day
from tasks.io import file_sha256, write_table_atomic
from tasks.plan.shards import Shard, plan_shards, split_shard
from tasks.plan.sizing import RENDER_BATCH, RunSizes, run_sizes
from tasks.report import index as report_index
from tasks.run import manifest as mf
from tasks.run.deadline import PUBLISH_MARGIN_S, DeadlineMissed, estimate, parse_deadline
from tasks.run.info import RunInfo
from tasks.run.state import Found, effective_settings, find_run, load_record, run_identity, save_record, write_state

Mode = Literal["run", "explain"]
#: Dask reruns a task whose worker died once more elsewhere; a shard that kills a second worker is split.
ALLOWED_FAILURES = 1
#: Render batches carry no poison of their own (the shard was explained); one that shared a worker with a
#: task that killed it twice gets KilledWorker and is submitted again, up to this many attempts in all.
RENDER_ATTEMPTS = 3


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
    """Whether the report step (tasks/report/render.py) is installed; without it runs still produce explanations."""
    return importlib.util.find_spec("tasks.report.render") is not None


# --- tasks in the flow process ------------------------------------------------------------------


@dataclass
class Selection:
    """The decisions a run explains: ``selected`` (global positions, in order) of which ``planned`` go to
    the workers (the others failed at input); ``shards`` cut ``planned``."""

    selected: np.ndarray
    planned: np.ndarray
    shards: list[Shard]
    input_failures: dict[int, str]
    sizes: RunSizes  # shard and render-batch sizes, grown with the decisions (tasks/plan/sizing.py)


@task(name="load-config", **IO, **NOT_CACHED)
def load_config_task(config_path: str) -> Config:
    return load_config(config_path)


@task(name="validate-inputs", **IO, **NOT_CACHED)
def validate_inputs(config: Config, require_report_columns: bool) -> tuple[DecisionsIndex, dict[int, str]]:
    """Check decisions and reference (streamed; an input-level problem raises); return the ids for planning
    and the rows with row-level problems (position -> reason), which fail alone."""
    row_failures: dict[int, str] = {}
    index = scan_decisions(config, require_report_columns=require_report_columns, row_failures=row_failures)
    assert index is not None
    read_reference(config)
    get_run_logger().info("%d decisions in %d file(s); %d with row-level problems", index.num_rows,
                          len(index.files), len(row_failures))
    return index, row_failures


@task(name="plan-shards", **NOT_CACHED)
def plan_task(config: Config, index: DecisionsIndex, limit: int | None, ids_file: str | None,
              run_date: str | None = None, row_failures: dict[int, str] | None = None) -> Selection:
    if run_date:  # a night's run: that day's decisions only (tasks/inputs/schedule.py)
        positions = select_day(index, config, run_date, limit, ids_file)
    else:
        positions = select_positions(index, limit, ids_file, config.data.id_column)
    selected = np.arange(index.num_rows, dtype=np.int64) if positions is None else positions
    row_failures = row_failures or {}
    bad = np.isin(selected, np.fromiter(row_failures, np.int64, count=len(row_failures)))
    if not bad.any():
        sizes = run_sizes(len(selected), config.run.shard_size)
        return Selection(selected, selected, plan_shards(index, sizes.shard_size, positions), {}, sizes)
    planned = selected[~bad]
    failures = {int(p): row_failures[int(p)] for p in selected[bad]}
    sizes = run_sizes(len(planned), config.run.shard_size)
    return Selection(selected, planned, plan_shards(index, sizes.shard_size, planned), failures, sizes)


@task(name="checksums", **IO, **NOT_CACHED)
def checksums_task(config: Config) -> tuple[str, str, str]:
    """SHA-256 of model, decisions and reference, for the manifest and the workers' cache key."""
    from tasks.inputs.model import model_sha256

    decisions, reference = mf.input_checksums(config)
    return model_sha256(config.model), decisions, reference


@task(name="merge-explanations", **IO, **NOT_CACHED)
def merge_task(results: list[ShardResult], target: str, id_column: str, run: RunInfo, exclude: set[str]) -> int:
    metadata = {b"limelight.run": json.dumps(run.to_dict(), sort_keys=True).encode("utf-8")}
    return merge_parts(results, Path(target), id_column, metadata, exclude)


def _report_sources(config: Config) -> dict[str, str]:
    from tasks.report.text import report_sources

    return report_sources(config)


@task(name="explanation-quality", **IO, **NOT_CACHED)
def quality_task(explanations: str) -> dict[str, Any]:
    """Stability, fidelity, deletion-check and review figures of the run, for the manifest."""
    from tasks.explain.aggregate import quality_summary, read_for_summary

    return quality_summary(read_for_summary(explanations))


@task(name="render-summary", **NOT_CACHED)
def summary_task(
    explanations: str, counts: dict[str, int], review_ids: list[str], config: Config, run: RunInfo, target: str
) -> str:
    from tasks.explain.aggregate import read_for_summary
    from tasks.report.render import render_run_summary
    from tasks.report.summary import summary_counts

    frame = read_for_summary(explanations)
    return str(render_run_summary(frame, summary_counts(counts), review_ids, config, run, Path(target)))


# --- tasks on the workers -----------------------------------------------------------------------


@task(name="explain-shard", task_run_name="explain-{shard.name}", **IO, **NOT_CACHED)
def explain_task(config: Config, shard: Shard, run: RunInfo, staging: str) -> ShardResult:
    result = explain_shard(config, shard, run, staging)
    get_run_logger().info(
        "%s: %d decisions (%d failed) in %.1f s on %s (%s)", shard.name, result.decisions, len(result.failures),
        result.seconds, result.device, result.worker,
    )
    return result


@task(name="prepare-worker", **NOT_CACHED)
def prepare_task(config: Config, run: RunInfo) -> str:
    return prepare_worker(config, run)


def _report_entry(report: Any, subfolders: dict[str, str]) -> dict[str, Any]:
    """The index entry of a rendered report, moved first into its subfolder of ``[report] layout`` (if any)."""
    path = Path(report.path)
    sub = subfolders.get(str(report.decision_id), "")
    if sub:
        (path.parent / sub).mkdir(exist_ok=True)
        path = path.replace(path.parent / sub / path.name)
    file = f"{mf.REPORTS}/{sub}/{path.name}" if sub else f"{mf.REPORTS}/{path.name}"
    return {"id": report.decision_id, "file": file, "sha256": report.sha256, "needs_review": bool(report.needs_review)}


def _subfolders(config: Config, applicants: pd.DataFrame) -> dict[str, str]:
    """Decision id -> subfolder of its report under ``[report] layout``."""
    layout, id_column = config.report.layout, config.data.id_column
    if layout == "flat":
        return {}
    dates = applicants[config.report.date_column] if layout == "date" else [None] * len(applicants)
    return {str(i): report_index.report_subfolder(layout, str(i), None if pd.isna(d) else d)
            for i, d in zip(applicants[id_column], dates, strict=True)}


@task(name="render-reports", task_run_name="render-{result.name}-from-{start}", **IO, **NOT_CACHED)
def render_task(
    config: Config, run: RunInfo, result: ShardResult, reports_dir: str, start: int, stop: int
) -> dict[str, list[Any]]:
    """Render the customer reports of decisions ``[start, stop)`` of one shard, from its part files.

    A report that fails alone (its data breaks the template, say) becomes a failure of that decision;
    a problem of the whole step (fonts, notices: a LimelightError for the batch) fails the run.
    """
    from tasks.report.render import render_customer_reports

    applicants = pd.read_parquet(result.applicants).iloc[start:stop].reset_index(drop=True)
    id_column = config.data.id_column
    rows = pd.read_parquet(result.part)
    rows = rows[rows[id_column].isin(set(applicants[id_column]))]
    out = Path(reports_dir)
    subfolders = _subfolders(config, applicants)
    try:
        made = render_customer_reports(rows, applicants, config, run, out)
        return {"reports": [_report_entry(r, subfolders) for r in made], "failures": []}
    except LimelightError:
        raise
    except Exception:  # find the decisions it fails on
        made: list[dict[str, Any]] = []
        failures: list[Failure] = []
        for decision in applicants[id_column]:
            own = applicants[applicants[id_column] == decision].reset_index(drop=True)
            try:
                made += [_report_entry(r, subfolders) for r in render_customer_reports(
                    rows[rows[id_column] == decision], own, config, run, out)]
            except Exception as error:
                failures.append((str(decision), "render", one_line(error)))
        return {"reports": made, "failures": failures}


# --- the subflow that owns the Dask cluster -----------------------------------------------------


@dataclass
class ShardOutputs:
    results: list[ShardResult]
    reports: pa.Table = field(default_factory=report_index.SCHEMA.empty_table)  # in selection order
    render_failures: list[Failure] = field(default_factory=list)
    worker_failed: list[tuple[Shard, str]] = field(default_factory=list)  # one-decision shards whose task died
    unexplained: list[Shard] = field(default_factory=list)  # not reached before the deadline
    unrendered: list[str] = field(default_factory=list)  # explained, report not reached before the deadline
    reused_shards: int = 0
    reused_batches: int = 0
    estimate: str | None = None
    stopped_at_deadline: bool = False
    cluster_seconds: float = 0.0  # starting the workers
    explain_seconds: float = 0.0  # from the workers being up to the last shard explained
    render_seconds: float = 0.0  # from then to the last report rendered


def _wait_any(futures: Sequence[Any], timeout: float) -> list[Any]:
    """The futures that are done, waiting up to ``timeout`` seconds for the first one (polling: cheap, and
    independent of which Dask client made them)."""
    end = time.monotonic() + timeout
    while True:
        done = [f for f in futures if f.wrapped_future.done()]
        if done or time.monotonic() >= end:
            return done
        time.sleep(0.05)


class _Work:
    """The subflow's bookkeeping: a window of shards in flight (in selection order), their render batches,
    records of finished work (resume), bisection of shards whose task fails, the deadline."""

    def __init__(self, config: Config, shards: list[Shard], run: RunInfo, staging: Path, render: bool,
                 workers: int, deadline: datetime | None, best_effort: bool, render_resource: bool = True,
                 render_batch: int = RENDER_BATCH) -> None:
        self.config, self.run, self.staging, self.render = config, run, staging, render
        self.render_resource, self.render_batch = render_resource, render_batch
        self.queue: deque[Shard] = deque(shards)
        self.window = max(2, 2 * workers)
        self.workers = workers
        self.deadline, self.best_effort = deadline, best_effort
        self.explaining: dict[Any, Shard] = {}
        self.rendering: dict[Any, tuple[ShardResult, int, int]] = {}
        self.out = ShardOutputs(results=[])
        self.batches: dict[tuple[Any, ...], pa.Table] = {}  # compact: a million reports stay a few hundred MB
        self.total = sum(s.size for s in shards)
        self.explained = 0  # decisions explained or failed (progress)
        self.finished = 0  # decisions at their end (reported or failed), all
        self.finished_here = 0  # ... of them by this process (not taken from records): the calibration
        self.reused_decisions = 0
        self.calibration = sum(s.size for s in shards[:workers])
        self.clock = time.perf_counter()
        self.explain_done_at: float | None = None
        self.artifact: Any = None
        self.updates = 0
        self.render_attempts: dict[tuple[str, int], int] = {}

    # -- explain --
    def fill(self) -> None:
        while self.queue and len(self.explaining) < self.window:
            shard = self.queue.popleft()
            record = load_record(self.staging, f"explain-{shard.name}")
            if record is not None:
                result = ShardResult.from_dict(record)
                if Path(result.part).is_file() and Path(result.applicants).is_file():
                    self.out.reused_shards += 1
                    self.explained_ok(result, reused=True)
                    continue
            with dask.annotate(resources={RESOURCE: 1}):
                self.explaining[explain_task.submit(self.config, shard, self.run, str(self.staging))] = shard

    def explained_ok(self, result: ShardResult, reused: bool = False) -> None:
        self.out.results.append(result)
        if not reused:
            save_record(self.staging, f"explain-{result.name}", result.to_dict())
        self.explained += result.decisions + len(result.failures)
        self.ended(len(result.failures), reused)
        if not self.render:
            self.ended(result.decisions, reused)
            return
        for start in range(0, result.decisions, self.render_batch):
            self.submit_render(result, start, min(start + self.render_batch, result.decisions))

    def explained_failed(self, shard: Shard, error: BaseException) -> None:
        if isinstance(error, LimelightError | OSError):  # the run's problem (the model does not load, an input
            self.cancel()                                   # file went away): stop; a rerun resumes
            raise error
        if shard.size == 1:
            self.out.worker_failed.append((shard, one_line(error)))
            self.explained += 1
            self.ended(1, False)
            return
        left, right = split_shard(shard)
        get_run_logger().warning("%s failed (%s): splitting it into %s and %s", shard.name, one_line(error),
                                 left.name, right.name)
        self.queue.extendleft([right, left])

    # -- render --
    def submit_render(self, result: ShardResult, start: int, stop: int) -> None:
        key = f"render-{result.name}-{start}"
        record = load_record(self.staging, key)
        if record is not None and all((self.staging / r["file"]).is_file() for r in record["reports"]):
            self.out.reused_batches += 1
            self.rendered_ok(result, start, record, reused=True)
            return
        reports_dir = str(self.staging / mf.REPORTS)
        # One RENDER each: the render pool (and device workers with a free thread) takes a batch as soon as
        # its shard is explained. Without RENDER workers (a cluster that offers none): any worker.
        resources = {RENDER_RESOURCE: 1} if self.render_resource else {}
        with dask.annotate(resources=resources):
            future = render_task.submit(self.config, self.run, result, reports_dir, start, stop)
        self.rendering[future] = (result, start, stop)

    def rendered_ok(self, result: ShardResult, start: int, batch: dict[str, Any], reused: bool = False,
                    record: bool = True) -> None:
        if record and not reused:
            save_record(self.staging, f"render-{result.name}-{start}", batch)
        self.batches[(result.order, start)] = report_index.entries_table(batch["reports"])
        self.out.render_failures += [tuple(f) for f in batch["failures"]]  # type: ignore[misc]
        self.ended(len(batch["reports"]) + len(batch["failures"]), reused)

    def render_failed(self, result: ShardResult, start: int, stop: int, error: BaseException) -> None:
        if isinstance(error, LimelightError | OSError):
            self.cancel()
            raise error
        attempts = self.render_attempts.get((result.name, start), 1)
        if isinstance(error, KilledWorker) and attempts < RENDER_ATTEMPTS:  # a bystander of another task's crash
            self.render_attempts[(result.name, start)] = attempts + 1
            get_run_logger().warning("render batch %s from %d lost its worker (%s): submitting it again",
                                     result.name, start, one_line(error))
            self.submit_render(result, start, stop)
            return
        failures = [(i, "render", one_line(error)) for i in result.ids[start:stop]]
        self.rendered_ok(result, start, {"reports": [], "failures": failures}, record=False)  # a rerun retries

    # -- progress, deadline --
    def ended(self, count: int, reused: bool) -> None:
        self.finished += count
        if reused:
            self.reused_decisions += count
        else:
            self.finished_here += count
        _progress("explain", self.explained, self.total)
        if self.render:
            _progress("render", self.finished, self.total)
        if self.artifact is not None and (self.finished * 50 // max(self.total, 1) > self.updates
                                          or self.finished == self.total):
            self.updates = self.finished * 50 // max(self.total, 1)
            update_progress_artifact(self.artifact, progress=100.0 * self.finished / max(self.total, 1))

    def check_estimate(self) -> None:
        calibrated = min(self.calibration, self.total - self.reused_decisions)
        if self.deadline is None or self.out.estimate is not None or self.finished_here < max(calibrated, 1):
            return
        if self.finished >= self.total:
            return
        guess = estimate(total=self.total - self.reused_decisions, done=self.finished_here,
                         elapsed_s=time.perf_counter() - self.clock, workers=self.workers,
                         num_samples=self.config.explain.num_samples, now=mf.utc_now(), deadline=self.deadline)
        self.out.estimate = guess.describe()
        if not guess.meets and not self.best_effort:
            self.cancel()
            raise DeadlineMissed(f"deadline: {self.out.estimate} (--best-effort goes on and publishes what is "
                                 "finished by then)")
        _say(self.out.estimate)

    def stop_time(self) -> float | None:
        return None if self.deadline is None else self.deadline.timestamp() - PUBLISH_MARGIN_S

    def cancel(self) -> None:
        for future in [*self.explaining, *self.rendering]:
            with contextlib.suppress(Exception):
                future.wrapped_future.cancel()

    def stop_at_deadline(self) -> None:
        self.cancel()
        self.out.stopped_at_deadline = True
        self.out.unexplained = sorted([*self.queue, *self.explaining.values()], key=lambda s: s.order)
        self.out.unrendered = [i for result, start, stop in self.rendering.values() for i in result.ids[start:stop]]
        self.queue.clear()
        self.explaining.clear()
        self.rendering.clear()

    def run_all(self) -> None:
        stop = self.stop_time()
        self.fill()
        while self.explaining or self.rendering or self.queue:
            if stop is not None and time.time() >= stop:
                get_run_logger().warning("deadline reached: stopping; publishing what is finished")
                self.stop_at_deadline()
                break
            timeout = 1.0 if stop is None else min(1.0, stop - time.time())
            for future in _wait_any([*self.explaining, *self.rendering], timeout):
                self.handle(future)
            if not self.explaining and self.explain_done_at is None and not self.queue:
                self.explain_done_at = time.perf_counter()
            self.fill()
            self.check_estimate()

    def handle(self, future: Any) -> None:
        if future in self.explaining:
            shard = self.explaining.pop(future)
            try:
                result = future.result()
            except Exception as error:
                self.explained_failed(shard, error)
            else:
                self.explained_ok(result)
            return
        result, start, stop = self.rendering.pop(future)
        try:
            batch = future.result()
        except Exception as error:
            self.render_failed(result, start, stop, error)
        else:
            self.rendered_ok(result, start, batch)


@flow(name="limelight-explain-shards", persist_result=False, log_prints=False)
def explain_shards(
    config: Config, shards: list[Shard], run: RunInfo, staging: str, render: bool, workers: int = 1,
    deadline: datetime | None = None, best_effort: bool = False, render_resource: bool = True,
    render_batch: int = RENDER_BATCH,
) -> ShardOutputs:
    """Explain the shards on the workers (one DEVICE each, in order), and render each shard's reports.

    At most two shards per worker are in flight, so the selection's order (an ids file's urgency) is
    kept and a deadline stops with little work lost. A shard whose task fails (its worker died twice)
    is split in halves down to the decision that fails.
    """
    logger = get_run_logger()
    clock = time.perf_counter()
    runner = FlowRunContext.get().task_runner  # type: ignore[union-attr]
    if hasattr(runner, "client"):
        runner.client  # noqa: B018 - start the workers now, so the timings below are the work's own
    cluster_seconds = time.perf_counter() - clock
    if shards:  # a model that does not load stops the run here, before any shard
        with dask.annotate(resources={RESOURCE: 1}):
            logger.info("model ready: %s", prepare_task.submit(config, run).result())
    work = _Work(config, shards, run, Path(staging), render, workers, deadline, best_effort, render_resource,
                 render_batch)
    work.artifact = create_progress_artifact(progress=0.0, key="limelight-progress",
                                             description="decisions finished")
    work.run_all()
    end = time.perf_counter()
    explain_end = work.explain_done_at or end
    out = work.out
    out.results.sort(key=lambda r: r.order)
    if work.batches:
        out.reports = pa.concat_tables([work.batches[key] for key in sorted(work.batches)])
    out.cluster_seconds, out.explain_seconds = cluster_seconds, explain_end - work.clock
    out.render_seconds = end - explain_end if render else 0.0
    logger.info("explained %d decisions in %d shards (%d reused)", sum(r.decisions for r in out.results),
                len(out.results), out.reused_shards)
    return out


# --- the flow -----------------------------------------------------------------------------------


def _probe_writable(out: str, mode: Mode) -> None:
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


def _in_order(ids: Sequence[str], selected_ids: pa.Array) -> list[str]:
    """``ids`` in the order of the selection."""
    if not ids:
        return []
    where = pc.index_in(pa.array(ids, pa.string()), value_set=selected_ids).to_numpy(zero_copy_only=False)
    return [ids[i] for i in np.argsort(where, kind="stable")]


def failures_table(failures: Sequence[Failure], id_column: str, selected_ids: pa.Array) -> pa.Table:
    """``failures.parquet``: one row per failed decision (id, stage, error), in the selection's order."""
    ids = pa.array([f[0] for f in failures], pa.string())
    order = np.argsort(pc.index_in(ids, value_set=selected_ids).to_numpy(zero_copy_only=False), kind="stable")
    return pa.table({
        id_column: ids.take(pa.array(order, pa.int64())),
        "stage": pa.array([failures[i][1] for i in order], pa.string()),
        "error": pa.array([failures[i][2] for i in order], pa.string()),
    })


def _already_complete(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """The summary of a run this output folder already holds, complete, for the same inputs."""
    counts = manifest.get("counts", {})
    names = [n for n in (*manifest.get("outputs", {}), mf.MANIFEST) if (out / n).exists()]
    return {
        "run_id": manifest["run_id"], "counts": counts, "review_ids": report_index.review_ids(manifest, out),
        "outputs": {name: str(out / name) for name in names}, "devices": "none (already complete)",
        "seconds": {"workers_start": 0.0, "explain": 0.0, "render": 0.0, "total": 0.0},
        "decisions_per_second": None, "workers": [], "accounting": manifest.get("accounting", {}),
        "already_complete": True,
        "warnings": [f"run {manifest['run_id']} of these inputs is already complete in {out}: nothing to do"],
    }


@flow(name="limelight", persist_result=False, log_prints=False)
def limelight_flow(
    config_path: str,
    out: str,
    devices: str | None = None,
    cluster: str | None = None,
    limit: int | None = None,
    ids_file: str | None = None,
    mode: Mode = "run",
    run_date: str | None = None,
    deadline: str | None = None,
    best_effort: bool = False,
    trigger: str = "cli",
    started_by: str | None = None,
    render_workers: int | None = None,
) -> dict[str, Any]:
    """Explain the configured decisions and publish explanations, reports, summary, failures and manifest.

    ``run_date`` (YYYY-MM-DD) explains only that day's decisions (``[data] date_column``); a scheduled
    deployment's run without it explains the day before its scheduled start (flows/deployments.py).
    ``mode="explain"`` writes only the explanations Parquet file at ``out``. ``{date}`` (run_date, else the
    UTC start date) and ``{run_id}`` in ``out`` are filled in, so scheduled runs each write their own folder.
    ``deadline`` (ISO 8601 with its zone) estimates the finish after a calibration batch and stops if it would
    be missed, unless ``best_effort``; at the deadline the run stops and publishes what is finished.
    ``trigger`` and ``started_by`` are recorded in the manifest (the audit trail). ``render_workers`` sizes the
    render pool (default ``[run] render_workers``, else the cores the device workers leave; flows/cluster.py).
    """
    logger = get_run_logger()
    clock = time.perf_counter()
    started = mf.utc_now()
    warnings: list[str] = []
    run_date = run_date or scheduled_run_date()
    if run_date:
        run_date = parse_run_date(run_date).isoformat()
        logger.info("run_date %s: explaining that day's decisions", run_date)
    deadline_at = parse_deadline(deadline, started) if deadline else None

    config = load_config_task(config_path)
    plan = resolve_devices(devices or config.run.devices, cluster, config.run.torch_threads)
    render = mode == "run" and config.report.enabled
    if render and not renderer_available():
        warnings.append("the report step (tasks/report/render.py) is not installed: no PDFs rendered")
        logger.warning(warnings[-1])
        render = False
    pool = render_workers if render_workers is not None else config.run.render_workers
    plan = with_render_pool(plan, pool if render else 0, config.run.torch_threads)
    out = out.replace("{date}", run_date or started.date().isoformat())
    _probe_writable(out, mode)
    index, row_failures = validate_inputs(config, require_report_columns=render)
    selection = plan_task(config, index, limit, ids_file, run_date, row_failures)
    shards = selection.shards
    if plan.kind == "cluster":
        assert plan.address is not None
        plan = check_cluster(plan.address)
        if render and not plan.render_workers:
            warnings.append(f"cluster {plan.address}: no worker offers {RENDER_RESOURCE}; reports render on any "
                            f"worker (start CPU workers with --resources {RENDER_RESOURCE}=1 for a render pool)")
            logger.warning(warnings[-1])
    model_sha, decisions_sha, reference_sha = checksums_task(config)
    if run_date:  # a night of a hive-partitioned dataset is its own partition: later nights leave it unchanged
        decisions_sha = night_sha256(index.files, config, run_date) or decisions_sha
    checksums = {"config": config.source_sha256 or "", "model": model_sha, "decisions": decisions_sha,
                 "reference": reference_sha}

    resumable = "{run_id}" not in out  # a folder named after a new run id is never an earlier run's
    found = Found()
    identity = ""
    if resumable:
        out_path = Path(out).expanduser().resolve()
        identity = run_identity(mode=mode, checksums=checksums, selection=selection.selected,
                                extra={"render": render, **effective_settings(config)})
        found = find_run(out_path if mode == "run" else out_path.parent, identity=identity, mode=mode,
                         target=out_path)
        if found.manifest is not None and found.staging is None:
            logger.info("run %s of these inputs is already complete in %s", found.manifest["run_id"], out_path)
            return _already_complete(found.manifest, out_path)
    run = found.run or mf.build_run_info(
        config, run_id=mf.new_run_id(started), started=started, model_sha256=model_sha,
        decisions_sha256=decisions_sha, reference_sha256=reference_sha,
    )
    out_path = Path(out.replace("{run_id}", run.run_id)).expanduser().resolve()
    folder, created = _prepare_out(out_path, mode)
    staging = found.staging or mf.staging_dir(folder, run.run_id)
    if found.staging is None:
        staging.mkdir()
        write_state(staging, identity=identity or run.run_id, mode=mode, target=str(out_path), run=run)
    else:
        logger.info("resuming run %s from %s", run.run_id, staging)
    decisions = len(selection.selected)
    logger.info("run %s: %d decisions (%d failed at input) in %d shards on %s", run.run_id, decisions,
                len(selection.input_failures), len(shards), plan.describe())
    try:
        runner = task_runner(plan, config.run.torch_threads)
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
            outputs = explain_shards.with_options(task_runner=runner)(
                config, shards, run, str(staging), render, max(plan.workers, 1), deadline_at, best_effort,
                render_resource=plan.kind != "cluster" or plan.render_workers > 0,
                render_batch=selection.sizes.render_batch)
        results = outputs.results
        selected_ids = index.ids.take(pa.array(selection.selected, pa.int64())).combine_chunks()

        def shard_ids(shard: Shard) -> list[str]:
            rows = selection.planned[shard.first : shard.first + shard.size]
            return [str(i) for i in index.ids.take(pa.array(rows, pa.int64())).to_pylist()]

        id_at = {p: str(index.ids[p].as_py()) for p in selection.input_failures}
        failures: list[Failure] = [(id_at[p], "input", reason) for p, reason in selection.input_failures.items()]
        failures += [f for r in results for f in r.failures]
        failures += outputs.render_failures
        failures += [(shard_ids(s)[0], "worker", error) for s, error in outputs.worker_failed]
        not_reached = _in_order([i for s in outputs.unexplained for i in shard_ids(s)] + outputs.unrendered,
                                selected_ids)
        explained = [i for r in results for i in r.ids]
        reported = outputs.reports.column("id").to_pylist() if render else explained
        exclude = set(explained) - set(reported) if render else set()
        accounting = mf.accounting(selected_ids.to_pylist(), reported, [f[0] for f in failures], not_reached)
        if not accounting["holds"]:
            logger.error("accounting does not hold: %s", accounting["problem"])
        review_ids = [i for r in results for i in r.review_ids if i not in exclude]
        merged = staging / mf.EXPLANATIONS
        rows = merge_task(results, str(merged), config.data.id_column, run, exclude)
        failed_path = staging / mf.FAILURES
        write_table_atomic(failures_table(failures, config.data.id_column, selected_ids), failed_path)
        # The run summary's count keys (tasks/report/summary.py) and the execution's.
        counts = {
            "decisions_in": decisions,
            "reported": accounting["reported"],
            "failed": accounting["failed"],
            "not_reached": accounting["not_reached"],
            "reports_made": outputs.reports.num_rows,
            "needs_review": len(review_ids),
            "shards": len(shards),
            "workers": plan.workers,
        }
        if mode == "explain":
            merged.replace(out_path)
            published = {mf.EXPLANATIONS: str(out_path)}
            if failures:
                target = out_path.with_name(f"{out_path.stem}.failures.parquet")
                failed_path.replace(target)
                published[mf.FAILURES] = str(target)
            _cleanup(staging, [])
        else:
            names = [mf.EXPLANATIONS, mf.FAILURES]
            described: dict[str, Any] = {mf.EXPLANATIONS: {**mf.describe_file(merged), "rows": rows},
                                         mf.FAILURES: {**mf.describe_file(failed_path), "rows": len(failures)}}
            if render:
                _keep_only_reports(staging, set(outputs.reports.column("file").to_pylist()))
                index_rows = report_index.write_index([outputs.reports], staging / mf.REPORT_INDEX)
                summary_task(str(merged), counts, review_ids, config, run, str(staging / mf.SUMMARY))
                names += [mf.REPORTS, mf.REPORT_INDEX, mf.SUMMARY]
                described[mf.SUMMARY] = mf.describe_file(staging / mf.SUMMARY)
                described[mf.REPORT_INDEX] = report_index.describe_index(staging / mf.REPORT_INDEX, index_rows)
                described[mf.REPORTS] = {"index": mf.REPORT_INDEX, "count": index_rows,
                                         "layout": config.report.layout}
            execution = mf.Execution(
                devices=devices or config.run.devices, cluster=cluster, workers=plan.workers,
                render_workers=plan.render_workers, shards=len(shards),
                shard_size=selection.sizes.shard_size, render_batch=selection.sizes.render_batch,
                torch_threads=config.run.torch_threads, limit=limit,
                ids_file=str(Path(ids_file).resolve()) if ids_file else None,
                ids_file_sha256=file_sha256(ids_file) if ids_file else None,
                shards_per_worker=dict(sorted(Counter(f"{r.worker} ({r.device})" for r in results).items())),
            )
            manifest = mf.build_manifest(
                config, run, finished=mf.utc_now(), execution=execution,
                counts={**counts, "explanation_rows": rows}, review_ids=review_ids, review_source=mf.EXPLANATIONS,
                outputs=described, extra={**_audit(
                    identity=identity, trigger=trigger, started_by=started_by, run_date=run_date, started=started,
                    accounting=accounting, failures=failures, not_reached=not_reached, deadline=deadline_at,
                    best_effort=best_effort, outputs=outputs, resumed=found.staging is not None,
                ), "quality": quality_task(str(merged)), "report_sources": _report_sources(config) if render else None},
            )
            mf.publish(staging, out_path, names, manifest, keep_staging=bool(not_reached))
            published = {name: str(out_path / name) for name in [*names, mf.MANIFEST]}
    except LimelightError:
        _cleanup(staging, created)  # a problem to fix: its inputs change, so nothing here can be resumed
        raise
    except BaseException:
        if found.staging is None and not any((staging / "records").glob("*.json")):
            _cleanup(staging, created)
        raise  # else the staging folder stays: rerunning the same command resumes the run
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
    explained_here = sum(r.decisions for r in results)
    return {
        "run_id": run.run_id,
        "counts": counts,
        "accounting": accounting,
        "review_ids": review_ids,
        "outputs": published,
        "devices": plan.describe(),
        "render_workers": plan.render_workers,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "decisions_per_second": round(explained_here / outputs.explain_seconds, 2) if outputs.explain_seconds
        else None,
        "workers": _worker_table(results),
        "warnings": warnings,
        "estimate": outputs.estimate,
        "stopped_at_deadline": outputs.stopped_at_deadline,
        "resumed": {"shards": outputs.reused_shards, "render_batches": outputs.reused_batches}
        if found.staging is not None else None,
    }


def _keep_only_reports(staging: Path, files: set[str]) -> None:
    """Remove from the staged reports what is not a finished report of this run (a batch cut at the deadline,
    a killed writer's temporary file), so the published folder holds exactly the index's reports. ``files``
    are relative to ``staging`` (``reports/...``, in subfolders with a ``[report] layout``)."""
    folder = staging / mf.REPORTS
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.rglob("*"), reverse=True):  # deepest first: files, then emptied folders
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.relative_to(staging).as_posix() not in files:
            path.unlink()


def _audit(*, identity: str, trigger: str, started_by: str | None, run_date: str | None, started: datetime,
           accounting: dict[str, Any], failures: Sequence[Failure], not_reached: Sequence[str],
           deadline: datetime | None, best_effort: bool, outputs: ShardOutputs, resumed: bool) -> dict[str, Any]:
    """The manifest's audit trail: who or what started the run, its identity, what ended how."""
    return {
        "identity": identity,
        "trigger": {"trigger": trigger, "started_by": started_by, "run_date": run_date,
                    "attempt_started_at": mf.iso(started)},
        "accounting": accounting,
        "failures": {"file": mf.FAILURES, "count": len(failures),
                     "by_stage": dict(sorted(Counter(f[1] for f in failures).items()))},
        "not_reached_ids": list(not_reached),
        "deadline": None if deadline is None else {
            "deadline": deadline.isoformat(), "best_effort": best_effort, "estimate": outputs.estimate,
            "stopped_at_deadline": outputs.stopped_at_deadline,
        },
        "resumed": {"resumed": resumed, "shards_reused": outputs.reused_shards,
                    "render_batches_reused": outputs.reused_batches},
    }
