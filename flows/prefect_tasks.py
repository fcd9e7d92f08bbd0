"""The Prefect tasks of the limelight flow: thin wrappers around plain functions of ``tasks/``.

Their names (``load-config``, ``validate-inputs``, ``plan-shards``, ``checksums``, ``merge-explanations``,
``explanation-quality``, ``render-summary`` in the flow process; ``prepare-worker``, ``explain-shard``,
``render-reports`` on the Dask workers) are what the Prefect UI and logs show. Which step of the flow
calls which: flows/pipeline.py. Transient I/O failures are retried (:data:`IO`); nothing is cached.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import LimelightError, one_line
from tasks.explain.worker import Failure, ShardResult, explain_shard, merge_parts, prepare_worker
from tasks.inputs.config import Config, load_config
from tasks.inputs.data import DecisionsIndex, read_reference, scan_decisions, select_positions
from tasks.inputs.schedule import select_day
from tasks.plan.shards import Shard, plan_shards
from tasks.plan.sizing import RunSizes, run_sizes
from tasks.report import index as report_index
from tasks.run import manifest as mf
from tasks.run.info import RunInfo


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


# --- tasks in the flow process ------------------------------------------------------------------


@dataclass
class Selection:
    """The decisions a run explains: ``selected`` (global positions, in order) of which ``planned`` go to
    the workers (the others failed at input); ``shards`` cut ``planned``. Every row in order is a ``range``."""

    selected: np.ndarray | range
    planned: np.ndarray | range
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
    # "every row in order" is a range, not 8 bytes per decision held for the whole run (docs/performance.md)
    selected: np.ndarray | range = range(index.num_rows) if positions is None else positions
    planned, failures = selected, {}
    if row_failures:
        chosen = np.asarray(selected, dtype=np.int64)
        bad = np.isin(chosen, np.fromiter(row_failures, np.int64, count=len(row_failures)))
        if bad.any():
            planned, failures = chosen[~bad], {int(p): row_failures[int(p)] for p in chosen[bad]}
    sizes = run_sizes(len(planned), config.run.shard_size)
    # without failures, "every row in order" (positions None) plans without a list
    shards = plan_shards(index, sizes.shard_size, planned if failures else positions)
    return Selection(selected, planned, shards, failures, sizes)


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


@task(name="explanation-quality", **IO, **NOT_CACHED)
def quality_task(explanations: str, config: Config) -> dict[str, Any]:
    """Stability, fidelity, deletion-check and review figures of the run, for the manifest."""
    from tasks.explain.aggregate import REVIEW_REASONS, quality_summary, read_for_summary
    from tasks.inputs.protected import review_gates

    return quality_summary(read_for_summary(explanations), review_gates(config, REVIEW_REASONS))


@task(name="render-summary", **NOT_CACHED)
def summary_task(
    explanations: str, counts: dict[str, int], review_ids: list[str], config: Config, run: RunInfo, target: str,
    layout: int = 1, failures: str | None = None, protected: dict[str, Any] | None = None,
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render the run summary at ``target`` (``layout`` and ``failures``: tasks/report/summary_lists.py); return
    the run's quality figures (read once, for the summary and the manifest: the same as :func:`quality_task`).
    ``protected``: the run's protected-feature figures, if any; ``drift``: the comparison with the baseline, if
    any."""
    from tasks.explain.aggregate import REVIEW_REASONS, quality_summary, read_for_summary
    from tasks.inputs.protected import review_gates
    from tasks.report.render import render_run_summary
    from tasks.report.summary import summary_counts

    frame = read_for_summary(explanations)
    quality = quality_summary(frame, review_gates(config, REVIEW_REASONS))
    render_run_summary(frame, summary_counts(counts), review_ids, config, run, Path(target), quality, layout,
                       Path(failures) if failures else None, protected, drift)
    return quality


def protected_step(config: Config, explanations: Path, staging: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A run with protected features: write ``protected.parquet`` (the decisions where one would have been a
    principal reason) and return the figures for the summary and the manifest, and the file's manifest entry.
    Nothing in a run without them (docs/reports.md, "Prohibited bases")."""
    from tasks.explain.protected import PROTECTED_FILE, write_protected
    from tasks.inputs.protected import protected_features

    if not protected_features(config):
        return None, {}
    figures, rows = write_protected(explanations, config, staging / PROTECTED_FILE)
    return figures, {PROTECTED_FILE: {**mf.describe_file(staging / PROTECTED_FILE), "rows": rows}}


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


def _report_entry(report: Any, reports_dir: Path) -> dict[str, Any]:
    """The index entry of a report rendered under ``reports_dir`` (``file`` relative to the output folder)."""
    file = f"{mf.REPORTS}/{Path(report.path).relative_to(reports_dir).as_posix()}"
    return {"id": report.decision_id, "file": file, "sha256": report.sha256, "needs_review": bool(report.needs_review)}


@task(name="render-reports", task_run_name="render-{result.name}-from-{start}", **IO, **NOT_CACHED)
def render_task(
    config: Config, run: RunInfo, result: ShardResult, reports_dir: str, start: int, stop: int
) -> dict[str, Any]:
    """Render the customer reports of decisions ``[start, stop)`` of one shard, from its part files.

    A report that fails alone (its data breaks the template, say) becomes a failure of that decision;
    a problem of the whole step (fonts, notices: a LimelightError for the batch) fails the run. Besides the
    reports and failures, the batch says which worker rendered it and, for a deadline run's rates, the warm-up
    it timed apart: a worker's first report (imports, fonts, shared pages) is rendered and timed on its own.
    """
    clock = time.perf_counter()
    from flows.pacing import first_time  # at call time: the worker process's own module state
    from tasks.report.render import render_customer_reports

    applicants = pd.read_parquet(result.applicants).iloc[start:stop].reset_index(drop=True)
    id_column = config.data.id_column
    rows = pd.read_parquet(result.part)
    rows = rows[rows[id_column].isin(set(applicants[id_column]))]
    out = Path(reports_dir)
    subfolders = report_index.report_subfolders(config, applicants)
    cold = first_time("render")  # WeasyPrint's imports, fonts and shared pages still to warm up
    timing: dict[str, Any] = {"worker": f"{os.uname().nodename}:{os.getpid()}", "warm": not cold}

    def render(some: pd.DataFrame) -> list[dict[str, Any]]:
        own = rows[rows[id_column].isin(set(some[id_column]))]
        return [_report_entry(r, out) for r in render_customer_reports(own, some, config, run, out, subfolders)]

    try:
        made: list[dict[str, Any]] = []
        if cold and len(applicants) > 1:  # the warm-up, timed apart
            made += render(applicants.iloc[:1].reset_index(drop=True))
            timing.update(warm=True, warmup_s=time.perf_counter() - clock, warmup_items=1)
            made += render(applicants.iloc[1:].reset_index(drop=True))
        else:
            made += render(applicants)
        return {"reports": made, "failures": [], **timing}
    except LimelightError:
        raise
    except Exception:  # find the decisions it fails on
        made = []
        failures: list[Failure] = []
        for decision in applicants[id_column]:
            try:
                made += render(applicants[applicants[id_column] == decision].reset_index(drop=True))
            except Exception as error:
                failures.append((str(decision), "render", one_line(error)))
        return {"reports": made, "failures": failures, "worker": timing["worker"], "warm": False}
