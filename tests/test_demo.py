"""The embedded demo: deterministic, cached, plausible data and a realistic model that honours the contract."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks import demo
from tasks.demo import FEATURE_NAMES, FEATURES, DemoArtifacts, build_demo, generate_portfolio
from tasks.demo import build as demo_build
from tasks.demo.portfolio import derived_seed
from tasks.inputs.config import FeatureConfig, load_config

REPO = Path(__file__).resolve().parent.parent
FILES = ("decisions.parquet", "reference.parquet", "model.pt", "demo.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifacts:
    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def model(built: DemoArtifacts) -> torch.jit.ScriptModule:
    return torch.jit.load(str(built.model))


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    return generate_portfolio(20_000, seed=123)


def _declined(model: torch.jit.ScriptModule, frame: pd.DataFrame) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(demo.model_inputs(frame)))[:, 1].numpy()


def test_default_demo_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIMELIGHT_DEMO_DIR", raising=False)
    assert demo.default_demo_dir() == REPO / ".cache" / "demo"
    monkeypatch.setenv("LIMELIGHT_DEMO_DIR", str(tmp_path / "elsewhere"))
    assert demo.default_demo_dir() == tmp_path / "elsewhere"


def test_build_is_deterministic(built: DemoArtifacts, model: torch.jit.ScriptModule, tmp_path: Path) -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    again = build_demo(tmp_path)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)

    for first, second in [(built.decisions, again.decisions), (built.reference, again.reference)]:
        pd.testing.assert_frame_equal(pd.read_parquet(first), pd.read_parquet(second))
        assert first.read_bytes() == second.read_bytes()
    assert built.model.read_bytes() == again.model.read_bytes()  # so the run's model sha256 is stable

    x = torch.from_numpy(demo.model_inputs(pd.read_parquet(built.decisions)))
    with torch.no_grad():
        assert torch.equal(model(x), torch.jit.load(str(again.model))(x))


def test_cache_hit_does_no_work(built: DemoArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = built.model.parent
    before = {name: (directory / name).stat().st_mtime_ns for name in FILES}

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cache hit must not generate or train anything")

    monkeypatch.setattr(demo_build, "generate_portfolio", fail)
    monkeypatch.setattr(demo_build, "train_model", fail)
    assert build_demo(directory) == built
    assert {name: (directory / name).stat().st_mtime_ns for name in FILES} == before


def test_changed_generator_version_rebuilds(built: DemoArtifacts, tmp_path: Path) -> None:
    directory = tmp_path / "stale"
    shutil.copytree(built.model.parent, directory)
    record = json.loads((directory / "demo.json").read_text(encoding="utf-8"))
    (directory / "demo.json").write_text(json.dumps({**record, "generator_version": 0}), encoding="utf-8")
    (directory / "decisions.parquet").write_bytes(b"stale")

    build_demo(directory)

    assert json.loads((directory / "demo.json").read_text(encoding="utf-8"))["generator_version"] == (
        demo.GENERATOR_VERSION
    )
    assert (directory / "decisions.parquet").read_bytes() == built.decisions.read_bytes()
    assert not list(directory.glob(".*.tmp")), "temporary files left behind"


def test_build_rejects_empty_portfolios(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_decisions"):
        build_demo(tmp_path, n_decisions=0)


def test_demo_config_loads_and_matches_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIMELIGHT_DEMO_DIR", raising=False)
    config = load_config(REPO / "config" / "demo.toml")

    assert config.features == [FeatureConfig(**feature) for feature in FEATURES]
    cache = demo.default_demo_dir()
    assert config.data.decisions == cache / "decisions.parquet"
    assert config.data.reference == cache / "reference.parquet"
    assert config.model.path == cache / "model.pt"
    assert config.model.classes == demo.CLASSES and config.model.explain == "declined"
    assert (config.explain.num_samples, config.explain.top_k, config.explain.seed) == (5000, 3, 20261122)
    assert config.report.applicant_fields == ["full_name"]
    assert config.report.date_column == "decision_date"
    assert config.report.lender.name != "Example Bank plc"


@pytest.mark.parametrize("catalog", sorted((REPO / "config" / "reasons").glob("*.toml")), ids=lambda p: p.name)
def test_reason_catalogs_cover_the_demo_features(catalog: Path) -> None:
    entries = tomllib.loads(catalog.read_text(encoding="utf-8"))["features"]
    for feature in FEATURES:
        assert feature["name"] in entries, f"{catalog.name}: no reason for {feature['name']}"
        if feature["kind"] == "categorical":
            assert set(feature["categories"]) <= set(entries[feature["name"]].get("categories", {}))
    if catalog.name == "en.toml":  # one name per factor across the reports and explanations.parquet
        assert {f["name"]: f["label"] for f in FEATURES} == {f["name"]: entries[f["name"]]["label"] for f in FEATURES}


def test_parquet_files_hold_the_contract_columns(built: DemoArtifacts) -> None:
    schema = pq.read_schema(built.decisions)
    assert schema.names == ["customer_id", "full_name", "decision_date", *FEATURE_NAMES]
    assert schema.field("decision_date").type == pa.date32()
    for feature in FEATURES:
        field_type = schema.field(feature["name"]).type
        if feature["kind"] == "numeric":
            assert pa.types.is_float64(field_type), feature["name"]
        else:
            assert pa.types.is_string(field_type) or pa.types.is_large_string(field_type), feature["name"]
    assert pq.read_schema(built.reference).names == FEATURE_NAMES

    decisions = pd.read_parquet(built.decisions)
    assert len(decisions) == 400 and len(pd.read_parquet(built.reference)) == 5000
    assert decisions["customer_id"].is_unique
    assert all(re.fullmatch(r"C-\d{6}", i) for i in decisions["customer_id"])
    days = sorted(set(decisions["decision_date"]))
    assert days[0] >= date(2026, 11, 1) and days[-1] <= date(2026, 11, 30)
    assert [(d - days[0]).days for d in days] == list(range(len(days))) and len(days) >= 3
    names = decisions["full_name"]
    assert {"Zoë Brontë", "José Núñez", "王芳"} <= set(names)
    assert 0.03 < np.mean([not n.isascii() for n in names]) < 0.35
    for feature in FEATURES:
        if feature["kind"] == "categorical":
            assert set(decisions[feature["name"]].dropna()) <= set(feature["categories"])


def test_the_files_have_realistic_gaps_and_the_model_handles_them(built: DemoArtifacts,
                                                                   model: torch.jit.ScriptModule) -> None:
    """Utilisation empty exactly where there is no revolving credit, some incomes undeclared (the self-employed
    more often), a few housing statuses unrecorded; nothing else missing. The model gives probabilities."""
    reference = pd.read_parquet(built.reference)
    complete = generate_portfolio(5000, derived_seed(7, 1))[FEATURE_NAMES]
    assert (reference["credit_utilization"].isna() == (complete["credit_utilization"] == 0)).all()
    undeclared = reference["annual_income"].isna()
    assert 0.02 < undeclared.mean() < 0.05
    self_employed = reference["employment_type"] == "self_employed"
    assert undeclared[self_employed].mean() > 2 * undeclared[~self_employed].mean()
    assert 0.01 < reference["housing"].isna().mean() < 0.03
    assert set(reference.columns[reference.isna().any()]) == {"annual_income", "credit_utilization", "housing"}
    present = reference.notna()
    pd.testing.assert_frame_equal(reference.where(present), complete.where(present))  # gaps only blank values
    decisions = pd.read_parquet(built.decisions)
    assert np.isnan(decisions.loc[1, "annual_income"])  # the showcase: page one of the demo has a gap
    assert 0.05 < decisions[FEATURE_NAMES].isna().any(axis=1).mean() < 0.15
    x = torch.from_numpy(demo.model_inputs(decisions))
    assert torch.isnan(x).any()
    out = model(x)
    assert torch.isfinite(out).all() and torch.allclose(out.sum(dim=1), torch.ones(len(x)), atol=1e-5)
    gaps = torch.full((1, 12), float("nan"))  # everything missing at once still gives probabilities
    assert torch.isfinite(model(gaps)).all()


def test_marginals_are_plausible(population: pd.DataFrame) -> None:
    p = population
    assert 34_000 < p["annual_income"].median() < 42_000
    assert p["debt_to_income"].between(0, 0.9).all() and p["credit_utilization"].between(0, 1.2).all()
    assert 0.01 < (p["credit_utilization"] > 1.0).mean() < 0.08  # a few over their limit
    assert p["loan_amount"].between(1_000, 50_000).all() and (p["loan_amount"] % 250 == 0).all()
    for count in ("delinquencies_2y", "recent_inquiries_6m", "open_accounts"):
        assert (p[count] >= 0).all() and (p[count] == p[count].round()).all()
    # Most applicants never missed a payment: every quartile is 0, so lime's quartile bins collapse.
    assert 0.8 < (p["delinquencies_2y"] == 0).mean() < 0.93
    assert np.percentile(p["delinquencies_2y"], [25, 50, 75]).tolist() == [0, 0, 0]
    not_working = p["employment_type"].isin(["unemployed", "retired"])
    assert (p.loc[not_working, "employment_years"] == 0).all()
    for feature in FEATURES:
        if feature["kind"] == "categorical":
            shares = p[feature["name"]].value_counts(normalize=True)
            assert set(shares.index) == set(feature["categories"]) and shares.min() > 0.02


def test_correlations_are_plausible(population: pd.DataFrame) -> None:
    p = population

    def rho(a: str, b: str, frame: pd.DataFrame = p) -> float:
        return float(frame[a].corr(frame[b], method="spearman"))

    working = p[~p["employment_type"].isin(["unemployed", "retired"])]
    assert rho("credit_history_years", "employment_years", working) > 0.25
    assert rho("annual_income", "loan_amount") > 0.3
    assert rho("credit_utilization", "delinquencies_2y") > 0.15
    assert rho("credit_utilization", "debt_to_income") > 0.3
    assert rho("annual_income", "debt_to_income") < -0.2
    assert rho("credit_history_years", "open_accounts") > 0.4

    income = p.groupby("employment_type")["annual_income"].median()
    assert income["unemployed"] < income["retired"] < income["salaried"]
    by_housing = p.groupby("housing")
    assert by_housing["annual_income"].median()["mortgage"] > by_housing["annual_income"].median()["rent"]
    assert by_housing["credit_history_years"].median()["own"] > by_housing["credit_history_years"].median()["rent"]


def test_model_outputs_valid_probabilities(model: torch.jit.ScriptModule) -> None:
    rng = np.random.default_rng(0)
    x = demo.model_inputs(generate_portfolio(1_000, seed=5))
    # lime-like perturbations: numeric values jittered (even negative), codes drawn at random
    x[:500, :9] *= rng.uniform(-0.5, 3.0, (500, 9)).astype(np.float32)
    x[:500, 9:] = rng.integers(0, 4, (500, 3)).astype(np.float32)
    out = model(torch.from_numpy(x))
    assert out.shape == (1_000, 2) and out.dtype == torch.float32 and not out.requires_grad
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert torch.allclose(out.sum(dim=1), torch.ones(1_000), atol=1e-5)


def test_model_auc_is_realistic(model: torch.jit.ScriptModule) -> None:
    fresh = generate_portfolio(10_000, seed=2027)
    outcome = demo.simulate_outcomes(fresh, seed=2028)
    assert 0.2 <= outcome.mean() <= 0.3
    declined = _declined(model, fresh)
    auc = demo.roc_auc(outcome, declined)
    assert 0.75 <= auc <= 0.86
    assert abs(declined.mean() - outcome.mean()) < 0.03  # calibrated
    threshold = load_config(REPO / "config" / "demo.toml").report.decision_threshold
    assert 0.15 <= (declined >= threshold).mean() <= 0.3  # the demo declines a realistic share
    assert auc <= demo.roc_auc(outcome, demo.default_logit(fresh)) + 0.01  # cannot beat the true risk


def test_model_effects_point_the_right_way(model: torch.jit.ScriptModule, population: pd.DataFrame) -> None:
    base = population.iloc[:2_000].reset_index(drop=True)
    declined = _declined(model, base).mean()

    def shifted(column: str, values: object) -> float:
        return float(_declined(model, base.assign(**{column: values})).mean())

    assert shifted("debt_to_income", (base["debt_to_income"] + 0.2).clip(upper=0.9)) > declined + 0.03
    assert shifted("credit_utilization", (base["credit_utilization"] + 0.3).clip(upper=1.2)) > declined + 0.02
    assert shifted("delinquencies_2y", base["delinquencies_2y"] + 1) > declined + 0.05
    assert shifted("annual_income", base["annual_income"] * 2) < declined - 0.02
    assert shifted("employment_type", "unemployed") > shifted("employment_type", "salaried")


def test_roc_auc_matches_definition() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert demo.roc_auc(labels, scores) == pytest.approx(expected)
