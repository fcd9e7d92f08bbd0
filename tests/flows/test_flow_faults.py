"""Faults end to end: bad rows, a model failing on some decisions, workers really killed, deadlines.

A real Prefect server, real Dask worker processes, the real demo model wrapped by tests/faulty_model.py
(which kills its own worker process, raises, or returns NaN / non-probabilities for chosen decisions).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.pipeline import limelight_flow
from flows.runtime import message_hook
from tasks.demo import FEATURE_NAMES
from tasks.inputs.config import load_config
from tasks.inputs.data import read_rows
from tasks.inputs.sources import SourceFile
from tasks.io import file_sha256
from tasks.run.deadline import DeadlineMissed
from tasks.run.manifest import not_reached_ids

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]  # tests/, where faulty_model.py lives


def encoded_rows(config: Path, decisions: Path, rows: list[int]) -> list[list[float]]:
    """The decisions' rows as the model sees them (float32 values, categories as codes)."""
    loaded = load_config(config)
    source = SourceFile(str(decisions), pq.ParquetFile(decisions).metadata.num_rows)
    return [read_rows(loaded, source, r, r + 1).x[0].astype("float32").tolist() for r in rows]


@pytest.fixture
def faulty(make_config, demo_artifacts, tmp_path, monkeypatch):
    """``faulty(decisions, shard_size, **faults)`` -> a config whose model is tests/faulty_model.py."""

    def make(decisions: Path, shard_size: int, features: dict | None = None, **faults: object) -> Path:
        spec = tmp_path / "faults.json"
        monkeypatch.setenv("LIMELIGHT_TEST_FAULTS", str(spec))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        config = make_config("faulty.toml", data={"decisions": str(decisions)}, run={"shard_size": shard_size},
                             model={"path": None, "entrypoint": "faulty_model:make"}, features=features or {})
        rows = {kind: encoded_rows(config, decisions, faults.pop(kind))  # type: ignore[arg-type]
                for kind in ("kill", "raise", "nan", "badsum", "slow") if kind in faults}
        spec.write_text(json.dumps({"model": str(demo_artifacts.model), **faults, **rows}))
        return config

    return make


def test_bad_rows_failing_decisions_and_killed_workers_are_all_accounted_for(prefect_api, small_demo, faulty,
                                                                             tmp_path):
    table = pq.read_table(small_demo.parent / "decisions.parquet").slice(0, 12)
    frame = table.to_pandas()
    frame.loc[2, "annual_income"] = float("nan")
    frame.loc[7, "housing"] = "houseboat"
    decisions = tmp_path / "decisions.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), decisions)
    marker = tmp_path / "killed-once"
    config = faulty(decisions, 2, marker=str(marker), kill=[11], **{"raise": [4]}, nan=[5], badsum=[9])
    out = tmp_path / "out"

    summary = limelight_flow(config_path=str(config), out=str(out), devices="cpu:2", trigger="test",
                             started_by="pytest")

    ids = frame.customer_id.tolist()
    assert marker.exists()  # a worker really died once, mid-shard, and its shard ran again
    failures = pd.read_parquet(out / "failures.parquet")
    assert failures.customer_id.tolist() == [ids[i] for i in (4, 5, 7, 9, 11)]  # the selection's order
    assert failures.stage.tolist() == ["explain", "explain", "input", "explain", "worker"]
    errors = failures.error.tolist()
    assert "ValueError: poisoned decision" in errors[0]
    assert "non-finite" in errors[1]
    assert "'houseboat' is not a configured category" in errors[2]
    assert "not probabilities" in errors[3]
    assert "KilledWorker" in errors[4]

    reported = [ids[i] for i in (0, 1, 2, 3, 6, 8, 10)]  # 1 and 2 miss their income: explained
    counts = summary["counts"]
    assert [counts[k] for k in ("decisions_in", "reported", "failed", "not_reached")] == [12, 7, 5, 0]
    assert summary["accounting"]["holds"]
    explained = pd.read_parquet(out / "explanations.parquet")
    assert explained.customer_id.drop_duplicates().tolist() == reported
    assert (explained["value"].isna() == explained["condition"].str.endswith(" is missing")).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["id"] for r in pq.read_table(out / "reports.parquet").to_pylist()] == reported
    assert len(list((out / "reports").glob("*.pdf"))) == 7
    assert manifest["failures"]["by_stage"] == {"explain": 3, "input": 1, "worker": 1}
    assert manifest["trigger"]["trigger"] == "test" and manifest["trigger"]["started_by"] == "pytest"
    assert manifest["accounting"]["holds"] and manifest["not_reached"] == {"file": "not-reached.parquet", "count": 0}
    assert not_reached_ids(manifest, out) == [] and manifest["outputs"]["not-reached.parquet"]["rows"] == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = limelight_flow(config_path=str(config), out=str(out), devices="cpu:2")  # a night run twice
    assert again["already_complete"] and again["run_id"] == summary["run_id"]
    assert {k: again["counts"][k] for k in counts} == counts
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten


def test_an_output_folder_of_another_run_is_refused_before_any_work(prefect_api, small_demo, tmp_path):
    from tasks.errors import InputError

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"run_id": "20260101T000000Z-0badc0de", "identity": "x"}))
    with pytest.raises(InputError, match="holds run 20260101T000000Z-0badc0de of other inputs or settings"):
        limelight_flow(config_path=str(small_demo), out=str(out), devices="cpu:1")
    assert os.listdir(out) == ["manifest.json"]


def slow_config(faulty, small_demo, seconds: float) -> Path:
    """The first 24 decisions each cost ``seconds`` more (once per worker process); shards of 2."""
    return faulty(small_demo.parent / "decisions.parquet", 2, sleep=seconds, slow=list(range(24)))


def test_a_deadline_the_calibration_shows_missed_stops_with_what_would_meet_it(prefect_api, small_demo, faulty,
                                                                              tmp_path):
    config = slow_config(faulty, small_demo, 2.5)  # 5 s per shard of 2: 60 s for 24 decisions on one worker
    deadline = (datetime.now(UTC) + timedelta(seconds=70)).isoformat(timespec="seconds")
    out = tmp_path / "out"
    with pytest.raises(DeadlineMissed) as error:
        limelight_flow(config_path=str(config), out=str(out), devices="cpu:1", limit=24, deadline=deadline)
    message = str(error.value)
    assert "misses it; to meet it use" in message and "workers" in message and "num_samples <=" in message
    assert not out.exists()


def test_at_the_deadline_a_best_effort_run_publishes_what_is_finished(prefect_api, small_demo, faulty, tmp_path):
    config = slow_config(faulty, small_demo, 2.5)  # 60 s of work, 35 s until it stops: some done, some not
    deadline = datetime.now(UTC) + timedelta(seconds=45)
    out = tmp_path / "out"
    said: list[str] = []
    with message_hook(said.append):
        summary = limelight_flow(config_path=str(config), out=str(out), devices="cpu:1", limit=24,
                                 deadline=deadline.isoformat(), best_effort=True)
    assert datetime.now(UTC) < deadline  # stopped in time, outputs published
    assert any("misses it" in line for line in said), (said, summary["counts"])  # the estimate was printed
    counts = summary["counts"]
    assert summary["stopped_at_deadline"] and summary["accounting"]["holds"]
    assert counts["reported"] >= 2 and counts["not_reached"] >= 2 and counts["failed"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    index = pq.read_table(out / "reports.parquet").to_pylist()
    reported = [r["id"] for r in index]
    first = pq.read_table(small_demo.parent / "decisions.parquet").column("customer_id").to_pylist()[:24]
    assert reported == [i for i in first if i in set(reported)]  # in order
    assert reported[:2] == first[:2]  # the most urgent first
    unreached = [i for i in first if i not in set(reported)]
    assert not_reached_ids(manifest, out) == unreached and "not_reached_ids" not in manifest  # O(1) manifest
    described = manifest["outputs"]["not-reached.parquet"]
    assert described["rows"] == manifest["not_reached"]["count"] == len(unreached)
    assert described["sha256"] == file_sha256(out / "not-reached.parquet")
    assert sorted(p.name for p in (out / "reports").iterdir()) == sorted(
        Path(r["file"]).name for r in index)
    assert pd.read_parquet(out / "explanations.parquet").customer_id.drop_duplicates().tolist() == reported
    assert manifest["deadline"]["stopped_at_deadline"] and "misses it" in manifest["deadline"]["estimate"]


def test_the_end_of_a_best_effort_run_is_a_result_not_an_error(prefect_api, small_demo, faulty, tmp_path):
    """The CLI as a user runs it: a best-effort run the deadline stops prints its ending as a result (no
    ``error:``), exits 3, and keeps the workers' and Dask's messages in the run's log file, off the terminal."""
    import subprocess
    import sys

    config = slow_config(faulty, small_demo, 2.5)  # 60 s of work on one worker: the deadline stops it
    deadline = (datetime.now(UTC) + timedelta(seconds=35)).isoformat(timespec="seconds")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_LOGGING", "PREFECT_LOGGING"))}
    env.update(COLUMNS="200", XDG_STATE_HOME=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config), "--out", str(out), "--devices",
                             "cpu:1", "--render-workers", "1", "--limit", "24", "--deadline", deadline,
                             "--best-effort"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error:" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip() == "", result.stderr[-2000:]  # warnings, if any, went to the log file
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["deadline"]["stopped_at_deadline"] and counts["not_reached"] > 0
    ending = result.stdout.strip().splitlines()[-1]
    assert ending.startswith(f"run {manifest['run_id']}: {counts['reported']} of 24 decisions reported"), ending
    assert ending.endswith(f"{counts['not_reached']} not reached before the deadline (see {out}/not-reached.parquet)")
    assert len(not_reached_ids(manifest, out)) == counts["not_reached"]
    (log,) = (tmp_path / "state" / "limelight" / "logs").glob("*.log")
    assert str(log) in result.stdout and "deadline" in log.read_text()


def test_a_run_killed_with_sigkill_resumes_to_the_same_bytes(prefect_api, small_demo, faulty, tmp_path):
    """Kill the whole run (CLI, workers) mid-way; rerunning the command finishes only what is missing.

    The uninterrupted run to compare with is the same run started afresh: its output folder gets only
    the killed run's state file (run id and start time), none of its finished work.
    """
    import shutil
    import signal
    import subprocess
    import sys

    config = slow_config(faulty, small_demo, 0.5)
    selected = pd.read_parquet(small_demo.parent / "decisions.parquet").head(8)
    assert selected[FEATURE_NAMES].isna().any(axis=1).any()  # decisions with missing values resume too

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "flows.cli", "run", str(config), "--out", str(out), "--devices", "cpu:1",
                "--limit", "8"]

    killed = tmp_path / "killed"
    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen(command(killed), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        give_up = time.monotonic() + 300
        while not list(killed.glob(".limelight-staging-*/records/render-*.json")):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < give_up
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its worker processes: one process group
        process.wait(timeout=30)
    (staging,) = killed.glob(".limelight-staging-*")
    assert not (killed / "manifest.json").exists()
    fresh = tmp_path / "fresh" / staging.name
    fresh.mkdir(parents=True)
    shutil.copy(staging / "state.json", fresh / "state.json")

    runs = [subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for out in (fresh.parent, killed)]  # independent folders: both at once
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output[-3000:]
    first, second = (json.loads((out / "manifest.json").read_text()) for out in (fresh.parent, killed))
    assert second["resumed"]["shards_reused"] >= 1 and second["resumed"]["render_batches_reused"] >= 1
    assert first["resumed"]["shards_reused"] == 0
    assert first["run_id"] == second["run_id"] and first["counts"] == second["counts"]
    assert second["counts"]["reported"] == 8 and second["accounting"]["holds"] and second["counts"]["failed"] == 0
    for name in ("explanations.parquet", "summary.pdf", "failures.parquet"):
        assert (fresh.parent / name).read_bytes() == (killed / name).read_bytes(), name
    assert first["outputs"]["reports.parquet"] == second["outputs"]["reports.parquet"]
    for entry in pq.read_table(killed / "reports.parquet").to_pylist():
        assert (fresh.parent / entry["file"]).read_bytes() == (killed / entry["file"]).read_bytes()
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]
