"""The explanations table: one row per (decision, rank), lime-style conditions, shares, directions."""

import re
from pathlib import Path

import numpy as np
import pytest

from tasks.engine import Explanations, fit_reference
from tasks.explain.aggregate import explanation_schema, explanation_table, format_value, shares
from tasks.inputs.config import FeatureConfig, parse_config


def make_config(min_fidelity: float = 0.3):
    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet", "id_column": "application_id"},
        "model": {"path": "m.pt", "classes": ["approved", "declined"], "explain": "declined"},
        "review": {"min_fidelity": min_fidelity},
        "features": [
            {"name": "age", "label": "Age", "kind": "numeric", "decimals": 0},
            {"name": "dti", "label": "Debt-to-income", "kind": "numeric"},
            {"name": "housing", "label": "Housing", "kind": "categorical", "categories": ["own", "rent", "free"]},
        ],
    }
    return parse_config(raw, Path("/tmp/c.toml"))


def test_table_rows_and_columns() -> None:
    config = make_config()
    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.integers(18, 80, 200), rng.uniform(0, 0.9, 200), rng.integers(0, 3, 200)])
    stats = fit_reference(reference.astype(float), config.features)
    x = np.array([[25.0, 0.85, 1.0], [61.0, 0.10, 0.0]])
    expl = Explanations(
        ids=["A-1", "B-2"],
        feature_index=np.array([[1, 2, 0], [0, 1, 2]]),
        weights=np.array([[0.12, -0.06, 0.02], [-0.05, 0.0, 0.0]]),
        intercept=np.array([0.3, 0.2]),
        local_pred=np.array([0.38, 0.15]),
        model_pred=np.array([0.4, 0.1]),
        fidelity=np.array([0.55, 0.1]),
    )
    table = explanation_table(expl, x, stats, config)
    assert list(table.columns) == explanation_schema("application_id").names
    assert len(table) == 6 and list(table["rank"]) == [1, 2, 3, 1, 2, 3]
    first = table.iloc[0]
    assert first["application_id"] == "A-1" and first["feature"] == "dti" and first["label"] == "Debt-to-income"
    assert first["condition"] == stats.features[1].condition(0.85) and first["condition"].startswith("dti >")
    assert first["value"] == "0.85" and first["direction"] == "raises"
    assert table.iloc[1]["condition"] == "housing=rent" and table.iloc[1]["value"] == "rent"
    assert table.iloc[1]["direction"] == "lowers"
    assert table.iloc[2]["value"] == "25"
    assert table.iloc[0:3]["share"].sum() == pytest.approx(100.0)
    assert table.iloc[0]["share"] == pytest.approx(60.0)
    assert list(table["needs_review"]) == [False] * 3 + [True] * 3
    assert list(table.iloc[3:6]["direction"]) == ["lowers", "none", "none"]


def test_adverse_decisions_name_only_factors_that_raised_them() -> None:
    """A decline's principal reasons are the factors that raised its probability, ranked; one that lowered it is
    listed apart as favourable; the other outcome keeps its main factors in either direction (issue 11)."""
    config = make_config()
    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.integers(18, 80, 200), rng.uniform(0, 0.9, 200), rng.integers(0, 3, 200)])
    stats = fit_reference(reference.astype(float), config.features)
    x = np.array([[25.0, 0.85, 1.0], [61.0, 0.10, 0.0]])
    expl = Explanations(  # lime's method: the top 3 by |weight|, a negative one among them
        ids=["declined", "approved"],
        feature_index=np.array([[1, 2, 0], [0, 1, 2]]),
        weights=np.array([[0.12, -0.30, 0.02], [-0.05, 0.04, 0.01]]),
        intercept=np.array([0.3, 0.2]), local_pred=np.array([0.7, 0.15]), model_pred=np.array([0.8, 0.1]),
        fidelity=np.array([0.55, 0.6]),
        width_found=np.array([False, True]),
    )
    table = explanation_table(expl, x, stats, config)
    declined = table[table["application_id"] == "declined"]
    assert list(declined["role"]) == ["reason", "reason", "favourable"]
    assert list(declined["feature"]) == ["dti", "age", "housing"] and list(declined["rank"]) == [1, 2, 3]
    assert (declined[declined["role"] == "reason"]["weight"] > 0).all()
    assert declined["share"].tolist() == pytest.approx([100 * 0.12 / 0.14, 100 * 0.02 / 0.14, 100.0])
    approved = table[table["application_id"] == "approved"]
    assert list(approved["role"]) == ["factor"] * 3 and list(approved["direction"]) == ["lowers", "raises", "raises"]
    # no kernel width reached the target fidelity: review, whatever the fidelity
    assert declined["review_reasons"].iloc[0] == "no-width" and approved["review_reasons"].iloc[0] == ""
    lenient = config.model_copy(update={"review": config.review.model_copy(update={"require_width": False})})
    assert explanation_table(expl, x, stats, lenient)["review_reasons"].iloc[0] == ""
    from tasks.explain.aggregate import quality_summary

    summary = quality_summary(table)
    assert summary["reasons_per_adverse_decision"] == {"2": 1}  # one decline, two factors raised it
    assert summary["review_reasons"]["no-width"] == 1 and summary["kernel_widths"] == {}


def test_shares_handle_all_zero_weights() -> None:
    np.testing.assert_array_equal(shares(np.zeros((1, 3))), np.zeros((1, 3)))


def test_format_value_unknown_code_and_thousands() -> None:
    income = FeatureConfig(name="income", label="Income", kind="numeric", decimals=0)
    housing = FeatureConfig(name="housing", label="Housing", kind="categorical", categories=["own"])
    assert format_value(income, 38123.4) == "38,123"
    assert format_value(housing, 0) == "own" and format_value(housing, 7) == "7"


def test_a_missing_value_is_null_and_its_condition_says_missing() -> None:
    config = make_config()
    rng = np.random.default_rng(1)
    reference = np.column_stack([rng.integers(18, 80, 200), rng.uniform(0, 0.9, 200), rng.integers(0, 3, 200)])
    reference = reference.astype(float)
    reference[::10, 1], reference[::7, 2] = np.nan, np.nan
    stats = fit_reference(reference, config.features)
    x = np.array([[40.0, np.nan, np.nan]])
    expl = Explanations(ids=["A-1"], feature_index=np.array([[1, 2, 0]]), weights=np.array([[0.1, -0.05, 0.01]]),
                        intercept=np.array([0.3]), local_pred=np.array([0.36]), model_pred=np.array([0.35]),
                        fidelity=np.array([0.6]))
    table = explanation_table(expl, x, stats, config)
    assert table["value"].isna().tolist() == [True, True, False] and table["value"][2] == "40"
    assert table["condition"].tolist()[:2] == ["dti is missing", "housing is missing"]
    assert format_value(config.features[2], float("nan")) is None


def quality_explanations(**overrides) -> Explanations:
    values = dict(
        ids=["ok", "low", "gap", "unstable", "deletion"],
        feature_index=np.tile([1, 2, 0], (5, 1)),
        weights=np.tile([0.1, -0.05, 0.02], (5, 1)),
        intercept=np.full(5, 0.3),
        local_pred=np.array([0.37, 0.37, 0.37, 0.37, 0.37]),
        model_pred=np.array([0.40, 0.40, 0.90, 0.40, 0.40]),
        fidelity=np.array([0.6, 0.1, 0.6, 0.6, 0.6]),
        stability=np.array([1.0, 1.0, 1.0, 0.0, 1.0]),
        order_agrees=np.array([True, True, True, False, True]),
        selection_z=np.array([5.0, 4.0, 3.0, 0.4, np.inf]),
        stable=np.array([True, True, True, False, True]),
        num_samples=np.array([10000, 10000, 10000, 80000, 10000]),
        deletion_delta=np.array([-0.1, -0.1, -0.1, -0.1, 0.05]),
        deletion_holds=np.array([True, True, True, True, False]),
    )
    values.update(overrides)
    return Explanations(**values)


def test_review_gate_reasons_and_quality_summary() -> None:
    from tasks.explain.aggregate import quality_summary

    config = make_config()
    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.integers(18, 80, 200), rng.uniform(0, 0.9, 200), rng.integers(0, 3, 200)])
    stats = fit_reference(reference.astype(float), config.features)
    x = np.tile([30.0, 0.5, 1.0], (5, 1))
    table = explanation_table(quality_explanations(), x, stats, config)
    firsts = table[table["rank"] == 1].set_index("application_id")
    assert firsts["review_reasons"].to_dict() == {
        "ok": "", "low": "low-fidelity", "gap": "prediction-gap", "unstable": "unstable", "deletion": ""
    }
    assert firsts["needs_review"].tolist() == [False, True, True, True, False]
    assert firsts.loc["gap", "prediction_gap"] == pytest.approx(0.53)
    strict = make_config().model_copy(update={"review": make_config().review.model_copy(
        update={"require_deletion": True, "require_stable": False})})
    table2 = explanation_table(quality_explanations(), x, stats, strict)
    reasons = table2[table2["rank"] == 1].set_index("application_id")["review_reasons"]
    assert reasons["deletion"] == "deletion-fails" and reasons["unstable"] == ""
    summary = quality_summary(table)
    assert summary["decisions"] == 5 and summary["stable_share"] == pytest.approx(0.8)
    assert summary["needs_review"] == 3 and summary["deletion_holds_share"] == pytest.approx(0.8)
    assert summary["review_reasons"] == {"low-fidelity": 1, "no-width": 0, "prediction-gap": 1, "unstable": 1,
                                         "deletion-fails": 0}
    assert summary["samples_distribution"] == {"10000": 4, "80000": 1} and summary["samples_mean"] == 24000.0
    assert summary["selection_z"]["max"] == 5.0  # the infinite z (nothing left to separate) is not a quantile


def test_lime_engine_leaves_stability_null() -> None:
    config = make_config()
    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.integers(18, 80, 200), rng.uniform(0, 0.9, 200), rng.integers(0, 3, 200)])
    stats = fit_reference(reference.astype(float), config.features)
    bare = quality_explanations(stability=None, order_agrees=None, selection_z=None, stable=None, num_samples=None)
    table = explanation_table(bare, np.tile([30.0, 0.5, 1.0], (5, 1)), stats, config)
    assert table["stable"].isna().all() and table["stability"].isna().all()
    assert "unstable" not in set(table["review_reasons"])  # unknown stability is not a review reason


@pytest.mark.parametrize(
    ("explain", "message"),
    [
        ({"max_samples_factor": 6}, "[explain] max_samples_factor: must be a power of 2"),
        ({"stability_runs": 0}, "[explain] stability_runs"),
        ({"confidence": 1.0}, "[explain] confidence"),
        ({"stabilty_runs": 2}, "did you mean 'stability_runs'"),
        ({"num_samples": 100, "stability_runs": 4},
         "[explain]: num_samples = 100 over stability_runs = 4 streams leaves fewer than 64 samples per stream"),
        ({"design": "halton"}, "[explain] design"),
    ],
)
def test_quality_config_validation(explain, message) -> None:
    from tasks.errors import ConfigError

    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet"},
        "model": {"path": "m.pt", "classes": ["a", "b"], "explain": "b"},
        "explain": explain,
        "features": [{"name": "age", "label": "Age", "kind": "numeric"}],
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(raw, Path("/tmp/c.toml"))


def test_reports_and_summary_show_the_checks(tmp_path: Path) -> None:
    """A decision gated for unstable reasons says so in its PDF (not 'fidelity below'), with the checks in the
    annex and the JSON; the run summary counts stability, the deletion check and the gates."""
    import json

    from render_support import demo_config, demo_run, embedded_files, flat, pdf_text, synthetic_inputs

    from tasks.explain.aggregate import quality_summary
    from tasks.report.render import render_customer_reports, render_run_summary

    config = demo_config("en", decision_column=None)
    run = demo_run(config)
    rows, applicants = synthetic_inputs(3, config, seed=5, review_share=0.0)
    ids = list(rows["customer_id"].unique())
    rows["review_reasons"] = ""
    rows["stability"], rows["order_agrees"], rows["selection_z"] = 1.0, True, 4.2
    rows["stable"], rows["num_samples"], rows["prediction_gap"] = True, 10000, 0.05
    rows["deletion_delta"], rows["deletion_holds"] = -0.12, True
    gated = rows["customer_id"] == ids[0]
    rows.loc[gated, ["review_reasons", "needs_review", "stable", "stability", "num_samples", "selection_z"]] = [
        "unstable", True, False, 0.0, 80000, 0.7]
    reports = render_customer_reports(rows, applicants, config, run, tmp_path / "reports")
    by_id = {r.decision_id: r for r in reports}
    text = flat(pdf_text(by_id[ids[0]].path))
    assert "principal reasons could not be established reliably" in text and "is below our minimum of" not in text
    assert "Explanation checks Stable top factors no (80,000 samples)" in text
    attached = json.loads(embedded_files(by_id[ids[0]].path)["explanation.json"])
    assert attached["quality"]["review_reasons"] == ["unstable"] and attached["quality"]["num_samples"] == 80000
    assert "Stable top factors yes (10,000 samples)" in flat(pdf_text(by_id[ids[1]].path))
    counts = {"decisions_in": 3, "reports_made": 3, "needs_review": 1, "failed": 0}
    summary = flat(pdf_text(render_run_summary(rows, counts, [ids[0]], config, run, tmp_path / "summary.pdf")))
    assert "Stability, faithfulness and review 2 of 3 decisions have a stable set of principal reasons" in summary
    assert "in the stated direction for 3 of 3 decisions" in summary
    assert "CUST-100000 0.50 · unstable" in summary  # the review list names the failed check
    assert "Decisions gated to human review: 1; a decision can fail several checks" in summary
    assert json.loads(embedded_files(tmp_path / "summary.pdf")["run-summary.json"])["quality"] == json.loads(
        json.dumps(quality_summary(rows)))
