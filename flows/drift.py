"""The run's comparison with its baseline, in the flow: find the baseline, compare, warn.

Orchestration only; the figures are tasks/run/drift.py's (docs/drift.md). The baseline is ``--baseline MANIFEST``
(the flow parameter ``baseline``), else the previous published run of the same config under the output root.
Nothing here fails a run: no baseline is one line of the log, an unreadable one a warning; shifts beyond the
``[drift]`` thresholds are warnings (log, the run's summary, a Prefect markdown and table artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.prefect_tasks import IO, NOT_CACHED
from tasks.errors import InputError, one_line
from tasks.inputs.config import Config
from tasks.run import drift as rd


@dataclass
class Drift:
    """The run's profile (every run's manifest: ``drift_profile``) and its comparison (``drift``; None without a
    baseline); ``notes``: what the log says once about the baseline."""

    profile: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # why there is no comparison although there is a baseline (a log warning)


def check_baseline(baseline: str | None) -> None:
    """``--baseline``: a readable limelight manifest, else one line before any work (exit 2)."""
    if baseline:
        rd.read_manifest(baseline)


@task(name="reason-drift", **IO, **NOT_CACHED)
def drift_task(explanations: str, config: Config, out_template: str, out: str, started_at: str,
               run_date: str | None, baseline: str | None) -> Drift:
    """The run's profile and, when there is a baseline, its comparison with it. Drift never fails a run: anything
    but a transient I/O error (retried) leaves the run without a comparison, and says why."""
    try:
        return _drift(explanations, config, out_template, out, started_at, run_date, baseline)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - a comparison must not cost the night its letters
        return Drift(problem=f"drift: no comparison ({one_line(error)})")


def _drift(explanations: str, config: Config, out_template: str, out: str, started_at: str, run_date: str | None,
           baseline: str | None) -> Drift:
    profile = rd.run_profile(explanations)
    if not config.drift.enabled:
        return Drift(profile)
    path = Path(baseline) if baseline else rd.find_baseline(out_template, Path(out), config.source, started_at,
                                                            run_date)
    if path is None:
        root = rd.output_root(out_template)[0]
        return Drift(profile, notes=[f"drift: no earlier published run of {config.source} under {root}; nothing to "
                                     "compare with (name one with --baseline MANIFEST)"])
    try:
        manifest, base = rd.baseline_profile(path)
    except InputError as error:
        return Drift(profile, problem=f"drift: baseline {path} not used ({error}); no comparison")
    labels = {f.name: f.label or f.name for f in config.features}
    comparison = {"baseline": rd.baseline_record(manifest, path.resolve(), "given" if baseline else "previous run"),
                  **rd.compare(base, profile, config.drift, labels)}
    return Drift(profile, comparison, [f"drift: compared with run {manifest.get('run_id')} ({path})"])


def report_drift(drift: Drift, run_id: str) -> list[str]:
    """Log the notes and each warning; a markdown and a table artifact when there is a comparison. Returns the
    warnings (the run's summary lists them; the CLI prints them)."""
    logger = get_run_logger()
    for note in drift.notes:
        logger.info(note)
    if drift.problem:
        logger.warning(drift.problem)
    comparison = drift.comparison
    if comparison is None:
        return [drift.problem] if drift.problem else []
    warnings = list(comparison["warnings"])
    for warning in warnings:
        logger.warning(warning)
    create_markdown_artifact(key="limelight-drift", markdown=drift_markdown(comparison, run_id),
                             description=f"limelight run {run_id} against its baseline")
    create_table_artifact(key="limelight-drift-reasons", table=comparison["reason_mix"]["features"],
                          description="share of declines naming each feature: baseline, this run, PSI, status")
    return warnings


def drift_markdown(comparison: dict[str, Any], run_id: str) -> str:
    """The ``limelight-drift`` artifact: the verdict, the warnings, the run-level figures."""
    base, review, decline, fid = (comparison["baseline"], comparison["review"], comparison["decline_rate"],
                                  comparison["fidelity"])
    lines = [
        f"# Drift: run `{run_id}` against `{base['run_id']}`",
        "",
        f"- **Baseline:** `{base['manifest']}` ({base['found']}; night {base.get('run_date') or '—'})",
        f"- **Decisions:** {comparison['decisions']} (baseline {comparison['baseline_decisions']}); declines "
        f"{comparison['declines']} (baseline {comparison['baseline_declines']})",
        f"- **Decline rate:** {decline['rate']} against {decline['baseline_rate']} ({decline['status']})",
        f"- **Review share:** {review['share']} against {review['baseline_share']} ({review['status']})",
        f"- **Fidelity:** median {fid['quantiles']['p50']} against {fid['baseline_quantiles']['p50']}; PSI "
        f"{fid['psi']}, KS {fid['ks']} ({fid['status']})",
        f"- **Reason mix PSI:** {comparison['reason_mix']['psi']}",
        "",
        "## Warnings",
        *([f"- {w}" for w in comparison["warnings"]] or ["- none: no shift beyond the thresholds"]),
    ]
    return "\n".join(lines) + "\n"
