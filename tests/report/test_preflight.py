"""tasks/report/preflight.py: what a run checks before any work; and `limelight run` failing on it in seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.errors import InputError, LimelightError
from tasks.inputs.config import load_config
from tasks.plan.sizing import estimate_output_bytes
from tasks.report import pdf
from tasks.report.preflight import check_free_space, check_report_files, planned_decisions, preflight_checks

runner = CliRunner()


@pytest.fixture
def no_report_font(monkeypatch):
    """A machine without the report font: the real fc-list lookup, asked for a family that is not installed."""
    monkeypatch.setitem(pdf.REQUIRED_FONTS, "en", {"Limelight Missing Sans": "fonts-limelight-missing"})
    pdf.require_fonts.cache_clear()
    yield
    pdf.require_fonts.cache_clear()


def test_the_report_files_of_the_demo_pass(small_demo):
    config = load_config(small_demo)
    check_report_files(config)
    preflight_checks(config, small_demo.parent / "out", planned_decisions(config), render=True)


def test_a_missing_font_is_one_line(small_demo, no_report_font):
    with pytest.raises(LimelightError) as error:
        check_report_files(load_config(small_demo))
    assert str(error.value).startswith("font 'Limelight Missing Sans' is not installed: install the Debian package "
                                       "fonts-limelight-missing")


def test_a_broken_catalog_and_a_missing_notice_are_one_line(make_config, tmp_path):
    (tmp_path / "reasons.toml").write_text("[features.annual_income]\nraises = 3\n", encoding="utf-8")
    with pytest.raises(LimelightError, match=r"reasons\.toml: \[features\.annual_income\] raises: must be a "
                                             r"non-empty text"):
        check_report_files(load_config(make_config(report={"reasons": str(tmp_path / "reasons.toml")})))
    with pytest.raises(LimelightError, match=r"no notice for jurisdiction 'atlantis'"):
        check_report_files(load_config(make_config("j.toml", report={"jurisdiction": "atlantis"})))


def test_free_space_is_checked_against_the_estimate(tmp_path):
    check_free_space(tmp_path / "new" / "out", 1024, 1)
    with pytest.raises(InputError) as error:
        check_free_space(tmp_path / "new" / "out", 1 << 60, 10**9)
    assert str(error.value).startswith(f"--out {tmp_path / 'new' / 'out'}: ")
    assert f"free in {tmp_path}, the run needs about 1048576.0 TB (1000000000 decisions)" in str(error.value)
    assert estimate_output_bytes(1000, render=True) > estimate_output_bytes(1000, render=False)
    assert estimate_output_bytes(1000, render=True, language="zh-CN") > estimate_output_bytes(1000, render=True)


def test_planned_decisions_reads_only_the_footers(small_demo, tmp_path):
    config = load_config(small_demo)
    assert planned_decisions(config) == 48
    assert planned_decisions(config, limit=5) == 5
    (tmp_path / "ids.txt").write_text("a\nb\n\n", encoding="utf-8")
    assert planned_decisions(config, ids_file=tmp_path / "ids.txt") == 2


def test_run_without_the_report_fonts_exits_2_in_seconds_leaving_nothing(small_demo, tmp_path, no_report_font,
                                                                          monkeypatch):
    """Before the Prefect server or any worker starts: seconds (the import of WeasyPrint is most of them; the
    bound is loose for a shared, busy test machine)."""
    import flows.server

    def no_server(*_args, **_kwargs):
        raise AssertionError("the preflight must fail before a Prefect server starts")

    monkeypatch.setattr(flows.server, "prefect_server", no_server)
    out = tmp_path / "out"
    started = time.perf_counter()
    result = runner.invoke(app, ["run", str(small_demo), "--out", str(out), "--devices", "cpu:1"])
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "font 'Limelight Missing Sans' is not installed" in lines[0]
    assert seconds < 15, seconds
    assert not out.exists()  # no output folder, so no staging folder in it
    assert not list(tmp_path.glob("**/.limelight-staging-*"))


def test_run_without_disk_for_its_output_exits_2(small_demo, tmp_path, monkeypatch):
    import tasks.report.preflight as module

    monkeypatch.setattr(module, "estimate_output_bytes", lambda decisions, **_: 1 << 62)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(small_demo), "--out", str(out), "--devices", "cpu:1", "--limit", "4"])
    assert result.exit_code == 2, result.output
    assert f"--out {out}: " in result.output and "(4 decisions); free space or choose another --out" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_the_flow_checks_it_too_before_staging(prefect_api, small_demo, tmp_path, no_report_font):
    """A deployment's run (no CLI) stops in the flow's validate step, before the plan step stages anything."""
    from flows.pipeline import limelight_flow

    out = tmp_path / "out"
    with pytest.raises(LimelightError, match="font 'Limelight Missing Sans' is not installed"):
        limelight_flow(config_path=str(small_demo), out=str(out), devices="cpu:1")
    assert not out.exists()


def test_a_config_in_another_order_than_the_model_stops_the_run(make_config, tmp_path):
    """The names check is part of the preflight (a torch model stores no names: shown with a LightGBM file)."""
    pytest.importorskip("lightgbm")
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    config = load_config(make_config())
    names = config.feature_names
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, len(names))), columns=names[::-1])
    lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(frame, rng.integers(0, 2, 200)).booster_.save_model(
        str(tmp_path / "model.txt"))
    variant = make_config("lgb.toml", model={"path": str(tmp_path / "model.txt")})
    result = runner.invoke(app, ["run", str(variant), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert (f"model.txt: feature 1 is '{names[-1]}' in the model but '{names[0]}' in {variant} [[features]]: list "
            "[[features]] in the model's order") in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()
    assert Path(variant).is_file()
