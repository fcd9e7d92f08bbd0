"""The nightly deployment: prefect.yaml, `limelight serve`, and operators' `prefect deployment run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest

from flows.deployments import nightly_deployment, read_spec
from tasks.errors import ConfigError
from tasks.io import dump_toml, file_sha256
from tasks.report.rerender import rerender

REPO = Path(__file__).resolve().parents[2]
DAYS = ("2026-11-19", "2026-11-20", "2026-11-21")
PER_DAY = 4
TEST_SAMPLES = 500  # tests/conftest.py


def test_prefect_yaml_defines_the_nightly_schedule():
    spec = read_spec()
    assert (spec.cron, spec.timezone, spec.concurrency_limit) == ("0 2 * * *", "Europe/London", 1)
    assert spec.parameters["config_path"] == str(REPO / "config" / "demo.toml")
    assert "run_date" not in spec.parameters  # it defaults to the night before the scheduled start

    deployment = nightly_deployment()
    assert deployment.name == "nightly" and deployment.entrypoint == "flows/pipeline.py:limelight_flow"
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/London")
    assert deployment.parameters == {
        "config_path": str(REPO / "config" / "demo.toml"), "out": str(REPO / "out" / "nightly" / "{date}"),
        "mode": "run", "trigger": "nightly", "started_by": "deployment limelight/nightly",
    }


def test_command_line_values_override_prefect_yaml(tmp_path):
    deployment = nightly_deployment("bank.toml", "/data/limelight/{date}", cron="30 1 * * *",
                                    timezone="America/New_York", devices="cuda:0,1", name="nightly-us")
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("30 1 * * *", "America/New_York")
    assert deployment.name == "nightly-us"
    assert deployment.parameters["config_path"] == str(Path("bank.toml").resolve())
    assert deployment.parameters["out"] == "/data/limelight/{date}"
    assert deployment.parameters["devices"] == "cuda:0,1"
    assert deployment.parameters["started_by"] == "deployment limelight/nightly-us"


def test_bad_schedules_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="timezone 'Mars/Olympus': not an IANA time zone"):
        nightly_deployment(timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="cron '0 25 \\* \\* \\*': "):
        nightly_deployment(cron="0 25 * * *")
    with pytest.raises(ConfigError, match=r"prefect.yaml: deployments: no deployment named 'weekly' \(found: nightly"):
        read_spec("weekly")
    broken = tmp_path / "prefect.yaml"
    broken.write_text("deployments:\n  - name: nightly\n    schedules: []\n")
    with pytest.raises(ConfigError, match=r"deployments.nightly.schedules: needs a cron schedule"):
        read_spec(path=broken)


def test_serve_needs_a_prefect_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "serve"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "limelight serve needs a Prefect server" in done.stderr and "Traceback" not in done.stderr


# --- against the real test server ---------------------------------------------------------------


def _prefect(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


@pytest.mark.slow
def test_prefect_deploy_registers_prefect_yaml(prefect_api):
    """`prefect deploy` (for a process work pool) registers the schedule and parameters of prefect.yaml."""
    from prefect.client.orchestration import get_client

    assert _prefect("work-pool", "create", "limelight", "--type", "process", "--overwrite").returncode == 0
    deployed = _prefect("deploy", "--name", "nightly")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("limelight/nightly")
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/London")
    assert deployment.entrypoint == "flows/pipeline.py:limelight_flow"
    assert deployment.parameters["trigger"] == "nightly" and deployment.parameters["out"] == "out/nightly/{date}"
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]


@pytest.fixture
def three_nights(demo_artifacts, tmp_path) -> Path:
    """A hive-partitioned decisions folder (decision_date=YYYY-MM-DD/) of three nights, 4 decisions each."""
    import tomllib

    table = pq.read_table(demo_artifacts.decisions).slice(0, PER_DAY * len(DAYS)).drop_columns(["decision_date"])
    root = tmp_path / "decisions"
    for number, day in enumerate(DAYS):
        (root / f"decision_date={day}").mkdir(parents=True)
        pq.write_table(table.slice(number * PER_DAY, PER_DAY), root / f"decision_date={day}" / "part-0.parquet")
    raw = tomllib.loads((REPO / "config" / "demo.toml").read_text(encoding="utf-8"))
    raw["data"].update({"decisions": str(root), "reference": str(demo_artifacts.reference),
                        "date_column": "decision_date"})
    raw["model"]["path"] = str(demo_artifacts.model)
    raw["explain"]["num_samples"] = TEST_SAMPLES
    config = tmp_path / "nightly.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    return config


def _wait_for_deployment(name: str, process: subprocess.Popen[str], log: Path, seconds: float = 90) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not register {name}: {log.read_text()}") from None
                time.sleep(0.5)


def _reports(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted((folder / "reports").iterdir())}


@pytest.mark.slow
def test_served_nightly_explains_the_night_before_and_reruns_change_nothing(prefect_api, three_nights, demo_artifacts,
                                                                            tmp_path):
    """`limelight serve` end to end: a scheduled run of 02:00 London on 21 Nov explains 20 Nov into out/2026-11-20;
    an operator's `prefect deployment run -p run_date=2026-11-20` of the same night leaves every byte as it was."""
    from prefect.deployments import run_deployment

    out = tmp_path / "out"
    # The served runs log to the console too (the CLI silences Prefect's console otherwise), for failures here.
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"}
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", str(three_nights), "--out", f"{out}/{{date}}",
             "--name", "nightly-served", "--devices", "cpu:1"],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
    try:
        _wait_for_deployment("limelight/nightly-served", serve, log)
        scheduled = datetime(2026, 11, 21, 2, 0, tzinfo=ZoneInfo("Europe/London"))
        flow_run = run_deployment("limelight/nightly-served", scheduled_time=scheduled, timeout=240)
        assert flow_run.state.is_completed(), log.read_text()[-6000:]
        night = out / "2026-11-20"
        manifest = json.loads((night / "manifest.json").read_text())
        first = _reports(night)
        assert len(first) == PER_DAY == manifest["counts"]["decisions_in"]
        assert sorted(os.listdir(out)) == ["2026-11-20"]
        audit = json.dumps(manifest)
        assert '"nightly"' in audit and "deployment limelight/nightly-served" in audit and "2026-11-20" in audit

        # The next night lands before the rerun: the night's own inputs (its partition) are unchanged.
        later = three_nights.parent / "decisions" / "decision_date=2026-11-22"
        later.mkdir()
        pq.write_table(pq.read_table(demo_artifacts.decisions).slice(100, PER_DAY).drop_columns(["decision_date"]),
                       later / "part-0.parquet")
        again = _prefect("deployment", "run", "limelight/nightly-served", "-p", "run_date=2026-11-20", "--watch",
                         "--watch-timeout", "240", timeout=300)
        assert again.returncode == 0, log.read_text()[-6000:]
        assert _reports(night) == first  # nothing duplicated, nothing rewritten with other bytes
        assert json.loads((night / "manifest.json").read_text())["outputs"]["reports.parquet"] == \
            manifest["outputs"]["reports.parquet"]
        assert [p.name for p in night.iterdir() if p.name.startswith(".")] == []
        # An auditor re-renders the night from its manifest: the partition key dates the reports.
        rerendered = rerender(night / "manifest.json", tmp_path / "audit")
        assert rerendered.reports == PER_DAY and rerendered.summary
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)
