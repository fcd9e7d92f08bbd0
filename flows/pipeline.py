"""The limelight flow: validate -> plan -> explain -> render -> publish.

Orchestration only: every step calls thin Prefect tasks (flows/prefect_tasks.py) around plain functions
of ``tasks/``. :func:`limelight_flow` is the composition; each step is a function of flows/steps.py:

1. ``validate``: load the config, resolve devices and the render pool (flows/cluster.py), probe ``--out``,
   check the inputs. Nothing is started when an input is bad.
2. ``plan``: select the decisions and cut them into shards, check the cluster, take the checksums, find an
   earlier attempt to resume (or the complete run: nothing to do), the run's info and staging folder.
3. ``explain``: a subflow with the Dask task runner (flows/work.py) explains the shards (one ``DEVICE`` per
   task) and renders each shard's reports as soon as its explanations exist (one ``RENDER`` per batch:
   the render pool). Explaining and rendering overlap on the workers. Back in the flow process, every
   decision is accounted for and the parts are merged into ``explanations.parquet``.
4. ``render``: what the flow process renders: the run summary, with only the finished reports kept and
   their index written.
5. ``publish``: everything staged into the output folder with the manifest last (flows/output.py holds
   the output-folder helpers); then ``summarize`` makes the Prefect artifacts and the returned summary.

Nothing is lost: every selected decision ends as a report (an explanation row in ``explain`` mode),
a row of ``failures.parquet`` (bad input row, the model failing on it, its report failing, or the
worker dying on it), or "not reached" when a deadline stopped the run; the manifest checks
``in = reported + failed + not_reached``. A killed run is resumed by rerunning the same command
(tasks/run/state.py; ``staging_guard`` in flows/steps.py keeps what a rerun needs).

The CLI (flows/cli.py) runs this flow against one Prefect server (flows/server.py); it can also be
deployed (flows/deployments.py, which reads the scheduled night through flows/runtime.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.output import Mode
from flows.steps import (
    Planned,
    Request,
    compare_with_baseline,
    explain,
    plan,
    publish,
    render,
    staging_guard,
    summarize,
    validate,
)


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
    baseline: str | None = None,
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
    ``baseline`` (a manifest) is the run the drift comparison is against; without it, the previous published run of
    the same config under the output root (flows/drift.py).

    Returns the run's summary: counts, accounting, outputs, timings, and the first ``RETURNED_REVIEW_IDS``
    (flows/output.py) decisions in review with ``review_count`` (all of them are in the explanations file).
    """
    request = Request(config_path, out, devices, cluster, limit, ids_file, mode, run_date, deadline, best_effort,
                      trigger, started_by, render_workers, baseline)
    checked = validate(request)
    planned = plan(request, checked)
    if not isinstance(planned, Planned):
        return planned  # --out already holds this run, complete: nothing to do
    with staging_guard(planned):
        explained = explain(request, checked, planned)
        drift = compare_with_baseline(request, checked, planned, explained)
        rendered = render(checked, planned, explained, drift)
        published = publish(request, checked, planned, explained, rendered, drift)
    return summarize(checked, planned, explained, published, drift)
