"""Prohibited bases: the config's mark, the names that suggest one, and the withheld factors of the explanations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.engine import Explanations, fit_reference
from tasks.errors import ConfigError
from tasks.explain.aggregate import quality_summary
from tasks.explain.protected import protected_figures, would_be_reasons
from tasks.inputs.config import parse_config
from tasks.inputs.protected import PROTECTED_GATE, review_gates, suggested_basis, unmarked_warnings


def make_config(age: dict | None = None, status: dict | None = None):
    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet", "id_column": "application_id"},
        "model": {"path": "m.pt", "classes": ["approved", "declined"], "explain": "declined"},
        "review": {"min_fidelity": 0.3},
        "features": [
            {"name": "age.in.years", "label": "Age", "kind": "numeric", "decimals": 0, **(age or {})},
            {"name": "dti", "label": "Debt-to-income", "kind": "numeric"},
            {"name": "personal.status.and.sex", "label": "Personal status", "kind": "categorical",
             "categories": ["single", "married", "divorced"], **(status or {})},
            {"name": "credit.amount", "label": "Amount", "kind": "numeric"},
        ],
    }
    return parse_config(raw, Path("/tmp/c.toml"))


@pytest.mark.parametrize(("name", "label", "basis"), [
    ("age.in.years", "", "age"), ("personal.status.and.sex", "", "marital status, sex"),
    ("foreign.worker", "", "national origin"), ("DateOfBirth", "", "age"), ("marital_status", "", "marital status"),
    ("x7", "Religion", "religion"), ("receives_welfare", "", "public assistance"), ("mortgage_balance", "", None),
    ("credit.amount", "Credit amount", None), ("usage_ratio", "", None),
])
def test_names_that_suggest_a_prohibited_basis(name: str, label: str, basis: str | None) -> None:
    assert suggested_basis(name, label) == basis


def test_validate_warns_of_unmarked_features_only() -> None:
    lines = unmarked_warnings(make_config().features, "c.toml")
    assert [line.split(" ")[3] for line in lines] == ["'age.in.years'", "'personal.status.and.sex'"]
    assert 'mark it protected = "age"' in lines[0] and "mark it protected = true" in lines[1]
    marked = make_config(age={"protected": False}, status={"protected": True})
    assert unmarked_warnings(marked.features) == []


@pytest.mark.parametrize(("age", "status", "message"), [
    ({}, {"protected": "age"}, "protected = 'age' needs kind = 'numeric'"),
    ({"age_threshold": 65}, {}, "age_threshold is for protected = 'age'"),
    ({"protected": "yes"}, {}, "protected"),
])
def test_bad_marks_are_one_line_errors(age: dict, status: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        make_config(age=age, status=status)
    assert "\n" not in str(error.value) and "[[features]]" in str(error.value)


def _table(config, x: np.ndarray):
    from tasks.explain.aggregate import explanation_table

    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.integers(18, 80, 200), rng.uniform(0, 0.9, 200), rng.integers(0, 3, 200),
                                 rng.uniform(100, 9000, 200)]).astype(float)
    stats = fit_reference(reference, config.features)
    n = len(x)
    expl = Explanations(
        ids=["old", "young", "status", "approved"][:n],
        feature_index=np.array([[0, 1, 3], [0, 1, 3], [2, 1, 0], [2, 1, 3]])[:n],
        weights=np.array([[0.20, 0.10, -0.05], [0.20, 0.10, -0.05], [0.15, 0.05, -0.02], [0.1, -0.1, 0.05]])[:n],
        intercept=np.full(n, 0.3), local_pred=np.full(n, 0.55), model_pred=np.array([0.6, 0.6, 0.6, 0.4])[:n],
        fidelity=np.full(n, 0.8),
    )
    return explanation_table(expl, x, stats, config)


def test_a_protected_reason_is_withheld_and_gated_and_the_truth_kept() -> None:
    config = make_config(age={"protected": "age"}, status={"protected": True})
    x = np.array([[70.0, 0.5, 1.0, 900.0], [30.0, 0.5, 1.0, 900.0], [40.0, 0.5, 1.0, 900.0],
                  [40.0, 0.5, 1.0, 900.0]])
    table = _table(config, x)
    by = {i: g.reset_index(drop=True) for i, g in table.groupby("application_id")}
    # aged 70: age raised the decline, so it is withheld and gated; aged 30: age is a reason like any other
    assert by["old"]["withheld"].tolist() == [True, False, False]
    assert by["old"]["role"].tolist() == ["reason", "reason", "favourable"]  # the truth: it was the first reason
    assert by["old"]["review_reasons"][0] == PROTECTED_GATE and by["old"]["needs_review"].all()
    assert by["young"]["withheld"].tolist() == [False, False, False] and by["young"]["review_reasons"][0] == ""
    # the stated reason's share is of the stated ones: the letter's shares add up to 100%
    assert by["old"]["share"].tolist() == pytest.approx([100 * 0.2 / 0.3, 100.0, 100.0])
    assert by["status"]["withheld"].tolist() == [True, False, False]
    # an approved decision: its protected factor is not shown either, but nothing is gated
    assert by["approved"]["withheld"].tolist() == [True, False, False]
    assert by["approved"]["review_reasons"][0] == ""
    gates = review_gates(config, ("low-fidelity",))
    assert gates == ("low-fidelity", PROTECTED_GATE)
    assert quality_summary(table, gates)["review_reasons"] == {"low-fidelity": 0, PROTECTED_GATE: 2}
    assert PROTECTED_GATE not in quality_summary(table)["review_reasons"]  # runs without them keep their keys

    rows = pa.Table.from_pandas(table[table["withheld"]], preserve_index=False)
    figures = protected_figures(rows, config)
    assert figures["review_decisions"] == 2
    age, status = figures["features"]
    assert (age["reason_decisions"], age["mean_weight"], age["omitted_decisions"]) == (1, 0.2, 1)
    assert age["rule"] == "age" and age["age_threshold"] == 62.0
    assert (status["reason_decisions"], status["mean_weight"], status["omitted_decisions"]) == (1, 0.15, 2)
    assert would_be_reasons(rows, "application_id").column("id").to_pylist() == ["old", "status"]


def test_a_run_without_protected_features_marks_nothing() -> None:
    config = make_config(age={"protected": False}, status={"protected": False})
    x = np.array([[70.0, 0.5, 1.0, 900.0]])
    table = _table(config, x)
    assert not table["withheld"].any() and table["review_reasons"][0] == ""
    assert review_gates(config, ("low-fidelity",)) == ("low-fidelity",)


def test_a_part_from_before_the_column_merges_with_withheld_null(tmp_path: Path) -> None:
    """A run resumed across versions: its older part files lack ``withheld``; it merges as null (not stated: no)."""
    import pyarrow.parquet as pq

    from tasks.explain.aggregate import explanation_schema
    from tasks.explain.worker import ShardResult, merge_parts

    schema = explanation_schema("id")
    old = schema.remove(schema.get_field_index("withheld"))
    part = tmp_path / "p.parquet"
    pq.write_table(pa.table({f.name: pa.array([None], f.type) for f in old}, schema=old), part)
    result = ShardResult(0, 1, 1, str(part), "", (), 0.0, "cpu", "w", ids=("A",))
    assert merge_parts([result], tmp_path / "merged.parquet", "id") == 1
    assert pq.read_table(tmp_path / "merged.parquet").column("withheld").to_pylist() == [None]
