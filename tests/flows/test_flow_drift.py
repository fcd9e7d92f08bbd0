"""flows/drift.py: a comparison's warnings go to the log and to Prefect artifacts (the figures: tests/run/)."""

from __future__ import annotations

import logging

import pandas as pd
from prefect import flow

from flows.drift import Drift, check_baseline, drift_markdown, drift_task, report_drift
from tasks.inputs.drift_config import DriftConfig
from tasks.run.drift import compare


def _profile(named: int, declines: int = 200) -> dict:
    return {"version": 1, "decisions": 1000, "declines": declines, "review": 10,
            "reasons": {"credit_utilization": named, "debt_to_income": 150}, "fidelity_bins": [0] * 45 + [1000] * 5,
            "fidelity_quantiles": {"p10": 0.9, "p50": 0.95, "p90": 0.99}}


def test_warnings_in_the_log_and_as_artifacts(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    comparison = {"baseline": {"run_id": "night-1", "manifest": "/out/2026-11-20/manifest.json",
                               "found": "previous run", "run_date": "2026-11-20"},
                  **compare(_profile(40), _profile(90), DriftConfig(), {"credit_utilization": "Credit utilisation"})}

    @flow(name="drift-report-test")
    def reporting() -> list[str]:
        return report_drift(Drift(profile=_profile(90), comparison=comparison, notes=["drift: compared"]), "night-2")

    state = reporting(return_state=True)
    warnings = state.result()
    assert warnings == comparison["warnings"] and len(warnings) == 1
    assert "Credit utilisation (credit_utilization) is a principal reason of 45% of declines, 20%" in warnings[0]
    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["limelight-drift", "limelight-drift-reasons"])))
    assert (logging.WARNING, warnings[0]) in {(log.level, log.message) for log in logs}
    assert {a.key: a.type for a in artifacts} == {"limelight-drift": "markdown", "limelight-drift-reasons": "table"}
    assert warnings[0] in drift_markdown(comparison, "night-2")


def test_a_bad_baseline_is_one_line(tmp_path):
    import pytest

    from tasks.errors import InputError

    check_baseline(None)
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(InputError, match=r"--baseline .*m.json: not a limelight manifest"):
        check_baseline(str(tmp_path / "m.json"))


def test_drift_never_fails_the_run(tmp_path, small_demo):
    """No baseline: the profile and a note; a baseline that cannot be read, or anything unexpected: a problem line."""
    from tasks.inputs.config import load_config

    config = load_config(small_demo)
    table = tmp_path / "night" / "explanations.parquet"
    table.parent.mkdir()
    pd.DataFrame({"customer_id": ["a"], "rank": [1], "role": ["reason"], "feature": ["debt_to_income"],
                  "fidelity": [0.9], "needs_review": [False]}).to_parquet(table)
    args = (str(tmp_path / "{date}"), str(table.parent), "2026-11-22T02:00:00Z", "2026-11-21")
    alone = drift_task.fn(str(table), config, *args, None)
    assert alone.profile["decisions"] == 1 and alone.comparison is None and alone.problem is None
    assert alone.notes[0].startswith("drift: no earlier published run of")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text('{"run_id": "old", "outputs": {}}')  # no explanations beside
    missing = drift_task.fn(str(table), config, *args, str(tmp_path / "old" / "manifest.json"))
    assert missing.comparison is None and "explanations are missing" in missing.problem
    (tmp_path / "broken.parquet").write_text("not parquet")
    broken = drift_task.fn(str(tmp_path / "broken.parquet"), config, *args, None)
    assert broken.profile is None and broken.problem.startswith("drift: no comparison (")
