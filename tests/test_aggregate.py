"""The explanations table: one row per (decision, rank), lime-style conditions, shares, directions."""

from pathlib import Path

import numpy as np
import pytest

from tasks.aggregate import explanation_schema, explanation_table, format_value, shares
from tasks.config import FeatureConfig, parse_config
from tasks.engine import Explanations, fit_reference


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


def test_shares_handle_all_zero_weights() -> None:
    np.testing.assert_array_equal(shares(np.zeros((1, 3))), np.zeros((1, 3)))


def test_format_value_unknown_code_and_thousands() -> None:
    income = FeatureConfig(name="income", label="Income", kind="numeric", decimals=0)
    housing = FeatureConfig(name="housing", label="Housing", kind="categorical", categories=["own"])
    assert format_value(income, 38123.4) == "38,123"
    assert format_value(housing, 0) == "own" and format_value(housing, 7) == "7"
