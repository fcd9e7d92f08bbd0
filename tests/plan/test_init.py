"""tasks/plan/init.py: a config and a catalog skeleton from real model files and a Parquet reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.errors import LimelightError
from tasks.inputs.config import load_config
from tasks.inputs.model import check_model_features
from tasks.plan.init import humanise, plan_init, write_init
from tasks.plan.validate import validate_all

GERMAN = Path(__file__).resolve().parents[2] / "bench" / "data" / "german_credit.csv.gz"
COLUMNS = ["duration_in_month", "credit_amount", "purpose", "housing", "age_in_years"]


@pytest.fixture(scope="module")
def german(tmp_path_factory) -> Path:
    """A folder with German credit's five columns as reference.parquet (text as pandas categories) and the first
    12 rows as decisions.parquet, with an application_id and a decision_date."""
    folder = tmp_path_factory.mktemp("german")
    data = pd.read_csv(GERMAN)
    frame = data[COLUMNS].copy()
    frame["target"] = (data["creditability"] == "bad").astype(np.int64)
    for name in ("purpose", "housing"):
        frame[name] = frame[name].astype("category")
    frame.drop(columns="target").to_parquet(folder / "reference.parquet")
    decisions = frame.drop(columns="target").iloc[:12].copy()
    decisions.insert(0, "application_id", [f"A{i:03d}" for i in range(12)])
    decisions["decision_date"] = pd.Timestamp("2026-11-20")
    decisions.to_parquet(folder / "decisions.parquet")
    frame[["target"]].to_parquet(folder / "target.parquet")
    return folder


def _target(folder: Path) -> np.ndarray:
    return pd.read_parquet(folder / "target.parquet")["target"].to_numpy()


def test_humanise():
    assert humanise("debt_to_income") == "Debt to income"
    assert humanise("creditAmount") == "Credit amount"
    assert humanise("DTI_ratio") == "DTI ratio"
    assert humanise("age-in-years") == "Age in years"


def test_xgboost_with_pandas_categories(german: Path, tmp_path: Path):
    import xgboost as xgb

    reference = pd.read_parquet(german / "reference.parquet")
    reordered = reference[["age_in_years", *COLUMNS[:-1]]]  # the model's order is not the reference's
    xgb.XGBClassifier(n_estimators=5, max_depth=3, enable_categorical=True, n_jobs=1).fit(
        reordered, _target(german)).get_booster().save_model(str(german / "model.ubj"))
    result = plan_init(reference=german / "reference.parquet", model=german / "model.ubj", out=tmp_path / "cfg",
                       decisions=german / "decisions.parquet")
    write_init(result)
    config = load_config(tmp_path / "cfg" / "limelight.toml")
    assert config.feature_names == ["age_in_years", *COLUMNS[:-1]]
    assert config.data.id_column == "application_id" and config.report.date_column == "decision_date"
    by_name = {f.name: f for f in config.features}
    assert by_name["housing"].kind == "categorical"
    assert by_name["housing"].categories == [str(c) for c in reference["housing"].cat.categories]
    assert by_name["credit_amount"].kind == "numeric" and by_name["credit_amount"].decimals == 0
    assert by_name["credit_amount"].label == "Credit amount"
    assert config.model.format == "xgboost" and config.model.explain == "declined"
    check_model_features(config.model, config.features, config.source)  # the names check accepts it
    # age is written marked (its name suggests a prohibited basis), with a note; validate has nothing to flag then
    assert by_name["age_in_years"].protected == "age" and by_name["credit_amount"].protected is None
    assert [n for n in result.notes if "prohibited basis" in n] == [
        f"{tmp_path / 'cfg' / 'limelight.toml'}: feature 'age_in_years' marked protected = \"age\": its name "
        "suggests a prohibited basis (age); check it"]
    result = validate_all(config)
    assert result.problems == [] and result.decisions == 12 and result.warnings == []
    unmarked = config.model_copy(update={"features": [f.model_copy(update={"protected": None})
                                                      for f in config.features]})
    assert [w.split(" ")[3] for w in validate_all(unmarked, check_model=False).warnings] == ["'age_in_years'"]


def test_catalog_skeleton_is_listed_by_validate_until_written(german: Path, tmp_path: Path):
    from tasks.report.text import load_reason_catalog, missing_catalog_entries

    result = plan_init(reference=german / "reference.parquet", model=german / "model.ubj", out=tmp_path,
                       decisions=german / "decisions.parquet")
    write_init(result)
    config = load_config(tmp_path / "limelight.toml")
    catalog = load_reason_catalog(config)
    assert all(entry.todo and entry.raises is None for entry in catalog.features.values())
    assert dict(catalog.features["housing"].categories) == {"for free": "for free", "own": "own", "rent": "rent"}
    warnings = missing_catalog_entries(config)
    assert warnings == [f"{result.catalog_path}: 5 entries still to write (todo = true; generic sentences until "
                        f"then): age_in_years, duration_in_month, credit_amount, purpose, housing"]
    text = result.catalog_path.read_text(encoding="utf-8")
    text = text.replace('[features.housing]\ntodo = true\n', '[features.housing]\nraises = "Your housing is '
                        '{value}: more likely declined."\nlowers = "Your housing is {value}: less likely declined."\n')
    result.catalog_path.write_text(text, encoding="utf-8")
    from tasks.report.text import _load_catalog

    _load_catalog.cache_clear()
    assert "housing" not in missing_catalog_entries(config)[0]
    assert "4 entries still to write" in missing_catalog_entries(config)[0]


def test_lightgbm_categories_come_from_the_model(german: Path, tmp_path: Path):
    import lightgbm as lgb

    reference = pd.read_parquet(german / "reference.parquet")
    lgb.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1, n_jobs=1).fit(reference, _target(german)) \
        .booster_.save_model(str(tmp_path / "model.txt"))
    result = plan_init(reference=german / "reference.parquet", model=tmp_path / "model.txt", out=tmp_path,
                       decisions=german / "decisions.parquet")
    assert [f.name for f in result.features] == COLUMNS
    assert result.names_from == "LightGBM feature_names"
    purpose = next(f for f in result.features if f.name == "purpose")
    assert purpose.categories == tuple(str(c) for c in reference["purpose"].cat.categories)
    assert "categories from the model" in purpose.note


def test_without_stored_names_the_reference_columns_are_used(german: Path, tmp_path: Path):
    """A model trained on a bare array: the reference's columns, text sorted, integer codes as 0..max."""
    import xgboost as xgb

    reference = pd.read_parquet(german / "reference.parquet").astype({"purpose": str, "housing": str})
    reference["housing_code"] = reference.pop("housing").map({"for free": 0, "own": 1, "rent": 2}).astype(np.int64)
    reference.to_parquet(tmp_path / "reference.parquet")
    rows = reference.assign(purpose=reference["purpose"].astype("category").cat.codes).to_numpy(np.float32)
    xgb.XGBClassifier(n_estimators=3, n_jobs=1).fit(rows, _target(german)).get_booster().save_model(
        str(tmp_path / "bare.ubj"))
    result = plan_init(reference=tmp_path / "reference.parquet", model=tmp_path / "bare.ubj", out=tmp_path)
    assert [f.name for f in result.features] == list(reference.columns)
    assert result.names_from == "the reference's columns"
    purpose = next(f for f in result.features if f.name == "purpose")
    assert purpose.categories == tuple(sorted(reference["purpose"].unique()))  # as pandas' astype("category")
    assert next(f for f in result.features if f.name == "housing_code").kind == "numeric"
    assert result.notes and "no --decisions given" in result.notes[0]


def test_refusals_are_one_line(german: Path, tmp_path: Path):
    result = plan_init(reference=german / "reference.parquet", model=german / "model.ubj", out=tmp_path,
                       decisions=german / "decisions.parquet")
    write_init(result)
    with pytest.raises(LimelightError) as error:
        write_init(result)
    assert str(error.value) == f"{result.config_path}: already exists; use --force to overwrite it"
    write_init(result, force=True)
    narrow = pd.read_parquet(german / "reference.parquet").drop(columns=["housing"])
    narrow.to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(LimelightError, match=r"narrow\.parquet: model feature 'housing' \(XGBoost feature_names\) "
                                             r"is not a column of the reference"):
        plan_init(reference=tmp_path / "narrow.parquet", model=german / "model.ubj", out=tmp_path)
    with pytest.raises(LimelightError, match=r"--id-column 'nope' not found"):
        plan_init(reference=german / "reference.parquet", model=german / "model.ubj", out=tmp_path,
                  decisions=german / "decisions.parquet", id_column="nope")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(LimelightError, match="pickle and joblib files are refused"):
        plan_init(reference=german / "reference.parquet", model=tmp_path / "model.pkl", out=tmp_path)


def test_skops_names_and_classes_with_reviewed_types(german: Path, tmp_path: Path):
    """scikit-learn through skops: feature_names_in_ and classes_; types skops does not trust need --trusted."""
    import skops.io as sio
    from sklearn.ensemble import HistGradientBoostingClassifier

    reference = pd.read_parquet(german / "reference.parquet")
    numbers = reference.assign(**{n: reference[n].cat.codes for n in ("purpose", "housing")})
    model = HistGradientBoostingClassifier(max_iter=5).fit(numbers[COLUMNS[::-1]], _target(german))
    sio.dump(model, tmp_path / "model.skops")
    untrusted = sio.get_untrusted_types(file=tmp_path / "model.skops")
    assert untrusted
    with pytest.raises(LimelightError, match=r"skops does not trust by default: .*\(limelight init: --trusted A,B"):
        plan_init(reference=german / "reference.parquet", model=tmp_path / "model.skops", out=tmp_path,
                  decisions=german / "decisions.parquet")
    result = plan_init(reference=german / "reference.parquet", model=tmp_path / "model.skops", out=tmp_path,
                       decisions=german / "decisions.parquet", trusted=untrusted)
    write_init(result)
    config = load_config(result.config_path)
    assert config.feature_names == COLUMNS[::-1] and config.model.trusted == untrusted
    assert config.model.classes == ["0", "1"] and config.model.explain == "1"
    assert validate_all(config).problems == []
