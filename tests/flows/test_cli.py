"""flows/cli.py: the limelight command (Typer's CliRunner for quick paths, subprocesses end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app

LIMELIGHT = [sys.executable, "-m", "flows.cli"]
runner = CliRunner()


def limelight(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the CLI as a user's shell would: without the test session's logging overrides."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_LOGGING", "PREFECT_LOGGING"))}
    return subprocess.run([*LIMELIGHT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "COLUMNS": "200", **(env or {})})


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "explain", "validate", "demo"):
        assert command in result.output


def test_validate_a_good_config(small_demo):
    result = runner.invoke(app, ["validate", str(small_demo)])
    assert result.exit_code == 0, result.output
    assert "48 decisions in 1 file" in result.output and "all valid" in result.output


def test_validate_lists_every_problem(make_config, tmp_path):
    import pyarrow.parquet as pq

    broken = pq.read_table(_decisions(make_config())).drop(["housing"])
    pq.write_table(broken, tmp_path / "broken.parquet")
    missing_model = tmp_path / "missing.pt"
    config = make_config("broken.toml", data={"decisions": str(tmp_path / "broken.parquet")},
                         model={"path": str(missing_model)})
    result = limelight("validate", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("feature column 'housing' not found" in line for line in lines)
    assert any("missing.pt: model file not found" in line for line in lines)
    assert lines[-1].startswith("error:") and "2 problems found" in lines[-1]
    assert "Traceback" not in result.stderr


def test_validate_warns_about_features_missing_from_the_reason_catalog(make_config, tmp_path):
    import tomllib

    from tasks.io import dump_toml

    catalog = tomllib.loads((Path(__file__).parents[2] / "config/reasons/en.toml").read_text(encoding="utf-8"))
    del catalog["features"]["open_accounts"]
    (tmp_path / "reasons.toml").write_text(dump_toml(catalog), encoding="utf-8")
    config = make_config("gap.toml", report={"reasons": str(tmp_path / "reasons.toml")})
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "no [features.open_accounts] entry" in result.output and "all valid" in result.output


def _with_bad_rows(config: Path, target: Path) -> Path:
    """The small demo's decisions with a missing value at row 17 (NaN: explained) and row-level problems at rows
    18 (inf) and 30 (unknown category)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(_decisions(config))
    income = table.column("annual_income").to_pylist()
    income[16], income[17] = float("nan"), float("inf")
    kind = table.column("employment_type").cast(pa.string()).to_pylist()
    kind[29] = "astronaut"
    table = table.set_column(table.schema.get_field_index("annual_income"), "annual_income",
                             pa.array(income, pa.float64()))
    table = table.set_column(table.schema.get_field_index("employment_type"), "employment_type", pa.array(kind))
    pq.write_table(table, target)
    return target


def test_validate_warns_about_rows_a_run_would_fail_and_exits_0(make_config, tmp_path):
    bad = _with_bad_rows(make_config(), tmp_path / "rows.parquet")
    result = limelight("validate", str(make_config("rows.toml", data={"decisions": str(bad)})))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "failures.parquet" in line)
    assert warning.startswith(f"! {bad}: 2 rows will go to failures.parquet (1 infinite value, 1 unknown category): "
                              "row 18: column 'annual_income': inf is not a finite number; row 30: column "
                              "'employment_type': 'astronaut' is not a configured category"), warning
    assert "48 decisions in 1 file: 46 would be explained, 2 would fail" in result.stdout
    assert "error" not in result.stderr and "✗" not in result.stderr


def test_validate_lists_input_problems_and_warns_about_rows(make_config, tmp_path):
    bad = _with_bad_rows(make_config(), tmp_path / "rows.parquet")
    config = make_config("both.toml", data={"decisions": str(bad)}, model={"path": str(tmp_path / "missing.pt")})
    result = limelight("validate", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"! {bad}: 2 rows will go to failures.parquet") for line in lines), result.stderr
    assert any(line.startswith("✗") and "missing.pt: model file not found" in line for line in lines)
    assert lines[-1] == f"error: {config}: 1 problem found; besides, 2 decisions would fail alone"


def test_validate_probes_the_model_with_nan_where_the_reference_has_gaps(make_config, tmp_path):
    """The demo's reference has gaps; the model of the complete demo does not handle NaN in numbers: one line
    naming the feature and both fixes. With missing = "fail" for those features, it validates."""
    from tasks.demo import build_demo

    complete = build_demo(tmp_path / "complete", n_decisions=8, n_reference=200, gaps=False)
    result = limelight("validate", str(make_config("nan.toml", model={"path": str(complete.model)})))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("✗")]
    assert line == (f"✗ {complete.model}: returns non-finite output when 'annual_income' is missing (NaN), as in the "
                    "reference and so in LIME's samples: use a model that handles NaN, or set [[features]] missing = "
                    "\"fail\" for 'annual_income' (a decision missing it then fails alone)")
    fail = {"annual_income": {"missing": "fail"}, "credit_utilization": {"missing": "fail"}}
    result = limelight("validate", str(make_config("fail.toml", model={"path": str(complete.model)}, features=fail)))
    assert result.returncode == 0, result.stderr
    assert "will go to failures.parquet" in result.stderr and "column 'annual_income': missing value" in result.stderr


def _decisions(config: Path) -> Path:
    import tomllib

    return Path(tomllib.loads(config.read_text())["data"]["decisions"])


def test_user_errors_are_one_red_line_exit_2(tmp_path):
    result = limelight("validate", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.toml'}: config file not found"
    (tmp_path / "bad.toml").write_text("[explain]\nnum_sample = 3\n")
    result = limelight("run", str(tmp_path / "bad.toml"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "[data]" in result.stderr or "missing required key" in result.stderr


@pytest.mark.slow
def test_run_bad_ids_against_the_session_server(prefect_api, small_demo, tmp_path):
    (tmp_path / "ids.txt").write_text("C-unknown\n")
    out = tmp_path / "out"
    result = limelight("run", str(small_demo), "--out", str(out), "--ids", str(tmp_path / "ids.txt"),
                       "--devices", "cpu:1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'ids.txt'} line 1: unknown customer_id 'C-unknown' (not in the decisions)"
    ]
    assert not out.exists()


@pytest.mark.slow
def test_explain_writes_only_the_parquet(prefect_api, small_demo, reference_explanations, tmp_path):
    target = tmp_path / "nested" / "explanations.parquet"
    result = limelight("explain", str(small_demo), "--out", str(target), "--devices", "cpu:2", "--limit", "20")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(target.parent)) == ["explanations.parquet"]
    reference = pd.read_parquet(reference_explanations)
    first = reference["customer_id"].drop_duplicates().iloc[:20]
    expected = reference[reference["customer_id"].isin(first)].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_parquet(target), expected)
    assert "decisions/s" in result.stdout


@pytest.mark.slow
def test_run_starts_its_own_prefect_server_when_none_is_configured(small_demo, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    out = tmp_path / "out"
    result = subprocess.run([*LIMELIGHT, "run", str(small_demo), "--out", str(out), "--devices", "cpu:2",
                             "--limit", "6"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["decisions_in"] == 6
    assert (out / "explanations.parquet").is_file()
    if (out / "reports").exists():
        assert len(list((out / "reports").glob("*.pdf"))) == 6


@pytest.mark.slow
def test_failure_on_a_worker_is_one_line_too(prefect_api, make_config, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00" * 64)
    config = make_config(model={"path": str(broken)})
    target = tmp_path / "out" / "e.parquet"
    result = limelight("explain", str(config), "--out", str(target), "--devices", "cpu:1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken}: not a loadable"), result.stderr
    assert not target.parent.exists()


def test_exit_codes_of_a_finished_run():
    """0: everything reported; 3: published, with failures or decisions not reached; 1: accounting broken."""
    import typer

    from flows.cli import EXIT_CRASH, EXIT_INCOMPLETE, _print_summary

    def summary(failed: int, not_reached: int, holds: bool = True) -> dict:
        counts = {"decisions_in": 10, "reported": 10 - failed - not_reached, "failed": failed,
                  "not_reached": not_reached, "needs_review": 0}
        return {"run_id": "R", "devices": "cpu", "counts": counts, "seconds": {"explain": 1.0, "total": 2.0},
                "outputs": {"failures.parquet": "/out/failures.parquet"}, "accounting": {"holds": holds,
                                                                                      "problem": "x"}}

    _print_summary(summary(0, 0))
    for failed, not_reached, holds, code in ((1, 0, True, EXIT_INCOMPLETE), (0, 2, True, EXIT_INCOMPLETE),
                                             (0, 0, False, EXIT_CRASH)):
        with pytest.raises(typer.Exit) as exit_:
            _print_summary(summary(failed, not_reached, holds))
        assert exit_.value.exit_code == code


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--out", "/proc/limelight-cannot/out"], "--out /proc/limelight-cannot/out: cannot write in /proc"),
        (["--deadline", "2020-01-01T09:00+01:00"], "--deadline '2020-01-01T09:00+01:00': already passed"),
        (["--deadline", "2030-01-01T09:00"], "give the time zone"),
        (["--best-effort"], "--best-effort: only with --deadline"),
        (["--baseline", "/nonexistent/manifest.json"], "--baseline /nonexistent/manifest.json: not found"),
    ],
    ids=["unwritable-out", "past-deadline", "naive-deadline", "best-effort-alone", "missing-baseline"],
)
def test_run_refuses_bad_options_before_any_work(small_demo, tmp_path, args, expected):
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    result = runner.invoke(app, ["run", str(small_demo), *out, *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
