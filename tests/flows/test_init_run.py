"""A new user's ten minutes: German credit as Parquet and an XGBoost .ubj trained on its raw columns, then
`limelight init`, `limelight validate`, `limelight run`: PDFs with no config line written by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app

GERMAN = Path(__file__).resolve().parents[2] / "bench" / "data" / "german_credit.csv.gz"
DECISIONS = 20
runner = CliRunner()


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """What a bank's engineer brings: reference.parquet (text columns as pandas categories), decisions.parquet
    (with an id column) and an XGBoost model trained on the raw columns with enable_categorical=True."""
    import xgboost as xgb

    folder = tmp_path_factory.mktemp("bank")
    frame = pd.read_csv(GERMAN)
    y = (frame.pop("creditability") == "bad").to_numpy(np.int64)
    for name in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = frame[name].astype("category")
    model = xgb.XGBClassifier(n_estimators=60, max_depth=4, learning_rate=0.2, enable_categorical=True, n_jobs=1,
                              random_state=0).fit(frame, y)
    model.get_booster().save_model(str(folder / "model.ubj"))
    frame.to_parquet(folder / "reference.parquet")
    decisions = frame.iloc[:DECISIONS].copy()
    decisions.insert(0, "application_id", [f"APP-{i:04d}" for i in range(DECISIONS)])
    decisions.to_parquet(folder / "decisions.parquet")
    np.save(folder / "native_p.npy", model.predict_proba(frame.iloc[:DECISIONS])[:, 1])
    return folder


@pytest.mark.slow
def test_init_validate_run_as_a_new_user(prefect_api, bank: Path):
    from test_cli import limelight

    timings = {}
    started = time.perf_counter()
    result = runner.invoke(app, ["init", "--reference", str(bank / "reference.parquet"), "--model",
                                 str(bank / "model.ubj"), "--decisions", str(bank / "decisions.parquet"),
                                 "--out", str(bank / "limelight")])
    timings["init"] = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    config = bank / "limelight" / "limelight.toml"
    assert "20 features (13 categorical) from XGBoost feature_names" in result.output
    assert f"limelight validate {config}" in result.output and f"limelight run {config}" in result.output

    again = runner.invoke(app, ["init", "--reference", str(bank / "reference.parquet"), "--model",
                                str(bank / "model.ubj"), "--out", str(bank / "limelight")])
    assert again.exit_code == 2 and f"{config}: already exists; use --force" in again.output

    started = time.perf_counter()
    result = runner.invoke(app, ["validate", str(config)])
    timings["validate"] = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "20 entries still to write (todo = true" in result.output
    assert "20 would be explained, 0 would fail" in result.output and "all valid" in result.output

    out = bank / "out"
    started = time.perf_counter()
    run = limelight("run", str(config), "--out", str(out), "--limit", str(DECISIONS), "--devices", "cpu:1",
                    "--render-workers", "1")
    timings["run"] = time.perf_counter() - started
    print(f"new user, German credit, XGBoost .ubj: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["reported"] == DECISIONS
    assert len(list((out / "reports").glob("*.pdf"))) == DECISIONS
    # the model explained is the one that decided: the codes it received are its own categories' indices
    explanations = pd.read_parquet(out / "explanations.parquet").drop_duplicates("application_id")
    np.testing.assert_allclose(explanations["model_pred"].to_numpy(), np.load(bank / "native_p.npy"), atol=1e-5)
