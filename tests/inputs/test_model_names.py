"""tasks/inputs/model_names.py: the model's own feature names (and kinds and categories) against [[features]],
for every format that stores them, on real model files trained on German credit (bench/data)."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from tasks.errors import ModelError
from tasks.inputs.config import FeatureConfig, ModelConfig
from tasks.inputs.model import check_model_features, load_model
from tasks.inputs.model_names import names_mismatch, read_model_facts

GERMAN = Path(__file__).resolve().parents[2] / "bench" / "data" / "german_credit.csv.gz"
COLUMNS = ["duration_in_month", "credit_amount", "age_in_years", "purpose", "housing"]


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, np.ndarray]:
    """Five German-credit columns, the text ones as pandas categories (sorted, as astype does)."""
    data = pd.read_csv(GERMAN)
    y = (data["creditability"] == "bad").to_numpy(np.int64)
    x = data[COLUMNS].copy()
    for name in ("purpose", "housing"):
        x[name] = x[name].astype("category")
    return x, y


def features(x: pd.DataFrame, order: list[str] | None = None, **changes: dict) -> list[FeatureConfig]:
    out = []
    for name in order or list(x.columns):
        kind = "categorical" if name in ("purpose", "housing") else "numeric"
        categories = [str(c) for c in x[name].cat.categories] if kind == "categorical" else None
        spec = {"name": name, "label": name, "kind": kind, "categories": categories, **changes.get(name, {})}
        out.append(FeatureConfig(**spec))
    return out


def model_config(path: Path, **kwargs) -> ModelConfig:
    return ModelConfig(path=path, classes=["good", "bad"], explain="bad", **kwargs)


def codes(x: pd.DataFrame) -> pd.DataFrame:
    return x.apply(lambda c: c.cat.codes if c.dtype.name == "category" else c).astype(np.float64)


@pytest.fixture(scope="module")
def xgboost_file(frame, tmp_path_factory) -> Path:
    x, y = frame
    path = tmp_path_factory.mktemp("xgb") / "model.ubj"
    xgb.XGBClassifier(n_estimators=5, max_depth=3, enable_categorical=True, n_jobs=1).fit(x, y) \
        .get_booster().save_model(str(path))
    return path


@pytest.fixture(scope="module")
def lightgbm_file(frame, tmp_path_factory) -> Path:
    x, y = frame
    path = tmp_path_factory.mktemp("lgb") / "model.txt"
    lgb.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1, n_jobs=1).fit(x, y).booster_.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def skops_file(frame, tmp_path_factory) -> Path:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x, y = frame
    path = tmp_path_factory.mktemp("skops") / "model.skops"
    sio.dump(LogisticRegression(max_iter=200).fit(codes(x), y), path)
    return path


@pytest.fixture(scope="module")
def onnx_file(frame, tmp_path_factory) -> Path:
    import onnx
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = frame
    rows = codes(x).to_numpy(np.float32)
    exported = to_onnx(LogisticRegression(max_iter=200).fit(rows, y), rows[:1], options={"zipmap": False})
    onnx.helper.set_model_props(exported, {"feature_names": json.dumps(COLUMNS)})
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(exported.SerializeToString())
    return path


FORMATS = ["xgboost_file", "lightgbm_file", "skops_file", "onnx_file"]


@pytest.mark.parametrize("fixture", FORMATS)
def test_the_models_own_names_are_read(fixture, frame, request):
    path = request.getfixturevalue(fixture)
    fmt = {"ubj": "xgboost", "txt": "lightgbm", "skops": "skops", "onnx": "onnx"}[path.suffix[1:]]
    facts = read_model_facts(path, fmt)
    assert facts.names == COLUMNS
    assert facts.width == 5
    if fmt in ("xgboost", "lightgbm"):  # both store the categorical inputs and their pandas categories
        kinds = {f.name: f.categorical for f in facts.features}
        assert kinds == {"duration_in_month": False, "credit_amount": False, "age_in_years": False,
                         "purpose": True, "housing": True}
        stored = {f.name: f.categories for f in facts.features if f.categories}
        assert stored["housing"] == tuple(frame[0]["housing"].cat.categories)


@pytest.mark.parametrize("fixture", FORMATS)
def test_config_in_the_models_order_loads(fixture, frame, request):
    model = load_model(model_config(request.getfixturevalue(fixture)), 5, features=features(frame[0]),
                       config_source="config.toml")
    assert model.num_features == 5


@pytest.mark.parametrize("fixture", FORMATS)
def test_another_order_is_refused_in_one_line(fixture, frame, request):
    path = request.getfixturevalue(fixture)
    swapped = ["duration_in_month", "age_in_years", "credit_amount", "purpose", "housing"]
    with pytest.raises(ModelError) as error:
        load_model(model_config(path), 5, features=features(frame[0], swapped), config_source="config.toml")
    assert str(error.value) == (f"{path}: feature 2 is 'credit_amount' in the model but 'age_in_years' in "
                                "config.toml [[features]]: list [[features]] in the model's order")


@pytest.mark.parametrize("fixture", FORMATS)
def test_a_missing_or_an_extra_name_is_refused(fixture, frame, request):
    path = request.getfixturevalue(fixture)
    fewer = features(frame[0], ["duration_in_month", "credit_amount", "age_in_years", "purpose"])
    with pytest.raises(ModelError, match=r"feature 5 is 'housing' in the model, which takes 5 features, but "
                                         r"config.toml \[\[features\]\] lists only 4"):
        check_model_features(model_config(path), fewer, "config.toml")
    renamed = features(frame[0])[:2] + [FeatureConfig(name="age", label="Age", kind="numeric")] + \
        features(frame[0])[3:]
    with pytest.raises(ModelError) as error:
        check_model_features(model_config(path), renamed, "config.toml")
    assert str(error.value) == (f"{path}: feature 3 is 'age_in_years' in the model but 'age' in config.toml "
                                "[[features]]; the model has no feature 'age'")


@pytest.mark.parametrize("fixture", ["xgboost_file", "lightgbm_file"])
def test_categories_and_kinds_the_model_stores_are_checked(fixture, frame, request):
    path = request.getfixturevalue(fixture)
    stored = [str(c) for c in frame[0]["housing"].cat.categories]
    reordered = features(frame[0], housing={"categories": stored[::-1]})
    with pytest.raises(ModelError) as error:
        check_model_features(model_config(path), reordered, "config.toml")
    assert str(error.value) == (f"{path}: feature 5 'housing': category 1 (code 0) is {stored[0]!r} in the model "
                                f"but {stored[-1]!r} in config.toml [[features]] categories")
    numeric = [FeatureConfig(name=f.name, label=f.label, kind="numeric") if f.name == "purpose" else f
               for f in features(frame[0])]
    with pytest.raises(ModelError, match=r"feature 4 'purpose' is categorical in the model but kind = 'numeric'"):
        check_model_features(model_config(path), numeric, "config.toml")


def test_names_a_library_made_up_are_not_checked(frame, tmp_path):
    """A model trained on a bare array (LightGBM's Column_0, ...; XGBoost none) stores no names to check."""
    x, y = frame
    lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(codes(x).to_numpy(), y).booster_.save_model(
        str(tmp_path / "bare.txt"))
    xgb.XGBClassifier(n_estimators=3).fit(codes(x).to_numpy(), y).get_booster().save_model(str(tmp_path / "bare.ubj"))
    for name, fmt in (("bare.txt", "lightgbm"), ("bare.ubj", "xgboost")):
        facts = read_model_facts(tmp_path / name, fmt)
        assert facts.features is None and facts.width == 5
        check_model_features(model_config(tmp_path / name), features(x, COLUMNS[::-1]), "config.toml")


def test_names_mismatch_words():
    assert names_mismatch(["a", "b"], ["a", "b"]) is None
    assert names_mismatch(["a", "b"], ["a", "b", "c"]) == ("feature 3 'c' of [[features]] is not a model input "
                                                          "(the model takes 2 features)")
    assert names_mismatch(["a", "b", "c"], ["a", "c", "b"]) == ("feature 2 is 'b' in the model but 'c' in "
                                                                "[[features]]: list [[features]] in the model's order")
    assert names_mismatch(["a", "b"], ["a", "c", "b"]) == ("feature 2 is 'b' in the model but 'c' in [[features]]; "
                                                           "the model has no feature 'c'")
    assert names_mismatch(["a", "b", "c"], ["a", "c"]) == ("feature 2 is 'b' in the model but 'c' in [[features]]; "
                                                           "'b' is missing from [[features]]")
    assert names_mismatch(["a", "b"], ["a", "x"]) == ("feature 2 is 'b' in the model but 'x' in [[features]]; the "
                                                      "model has no feature 'x'")


def test_validate_reports_the_mismatch(frame, xgboost_file, tmp_path):
    """limelight validate lists the names check among its problems (tasks/plan/validate.py)."""
    from tasks.inputs.config import load_config
    from tasks.io import dump_toml
    from tasks.plan.validate import validate_all

    x, _ = frame
    table = x.copy()
    table.to_parquet(tmp_path / "reference.parquet")
    decisions = table.iloc[:5].copy()
    decisions.insert(0, "customer_id", [f"C{i}" for i in range(5)])
    decisions.to_parquet(tmp_path / "decisions.parquet")
    swapped = features(x, ["credit_amount", "duration_in_month", "age_in_years", "purpose", "housing"])
    raw = {"data": {"decisions": "decisions.parquet", "reference": "reference.parquet"},
           "model": {"path": str(xgboost_file), "classes": ["good", "bad"], "explain": "bad"},
           "features": [f.model_dump(exclude_none=True) for f in swapped]}
    (tmp_path / "config.toml").write_text(dump_toml(raw), encoding="utf-8")
    result = validate_all(load_config(tmp_path / "config.toml"))
    assert result.problems == [f"{xgboost_file}: feature 1 is 'duration_in_month' in the model but 'credit_amount' "
                               f"in {tmp_path / 'config.toml'} [[features]]: list [[features]] in the model's order"]


def test_lightgbm_categories_that_cannot_be_matched_are_left_out(frame, tmp_path):
    """An integer column made categorical by categorical_feature is not in pandas_categorical: the lists no
    longer pair with the categorical features, so no categories are taken (the kinds still are)."""
    x, y = frame
    x = x.assign(age_in_years=x["age_in_years"] // 10)
    lgb.LGBMClassifier(n_estimators=3, num_leaves=7, verbose=-1, n_jobs=1).fit(
        x, y, categorical_feature=["age_in_years", "purpose", "housing"]).booster_.save_model(str(tmp_path / "m.txt"))
    facts = read_model_facts(tmp_path / "m.txt", "lightgbm")
    assert [f.categorical for f in facts.features] == [False, False, True, True, True]
    assert all(f.categories is None for f in facts.features)
