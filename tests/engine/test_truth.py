"""Known truth (issue 19): on a credit model that is exactly additive in log-odds, the engine's default
configuration must list the true reasons for a decline.

The model (``bench/truth.py``) is an Explainable Boosting Machine with main effects only (``interpret-core``, a dev
dependency) trained here, seeded and single-threaded, on the synthetic consumer-loan portfolio of
``bench/bench_matched.py`` with gaps, and exported to per-feature look-up tables. The truth for feature j of a
decision x is f(x) - mean f(x with x_j from the reference rows in another bin), in probability. Targets on 40
declined decisions, S = 2,000, the engine built by ``make_explainer`` from a config with the [explain] defaults
(``compile = "never"`` only, to keep the test fast; compiled results equal eager ones to float rounding):

- every listed reason truly raises the decline (100%);
- the first reason is the true first for >= 98% (at most 1 miss in 40);
- the reason set is the true top 3 for >= 95% of the decisions that are no near-tie (``truth_metrics``: the 3rd and
  4th truths within 5% of the 3rd).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from truth import Shape, additive_case, loan_features, true_contrasts, truth_metrics  # noqa: E402

from tasks.engine import make_explainer  # noqa: E402
from tasks.inputs.config import parse_config  # noqa: E402

THRESHOLD = 0.3
DECLINED = 40
SAMPLES = 2000
K = 3


@pytest.fixture(scope="module")
def additive():
    """The additive case (smaller: 4,000 applications, 4 bags, a 1,500-row reference) and the first 40 declined
    test rows with their truth."""
    torch.set_num_threads(1)
    case = additive_case(torch.device("cpu"), seed=0, rows=4000, outer_bags=4, reference_rows=1500)
    pred = case.model(torch.as_tensor(case.x, dtype=torch.float32))[:, 1].numpy()
    rows = np.flatnonzero(pred >= THRESHOLD)[:DECLINED]
    assert len(rows) == DECLINED
    x, ids = case.x[rows], [case.ids[i] for i in rows]
    return case, x, ids, true_contrasts(case.model, case.stats, x, case.stats.data)


def test_the_exported_model_is_additive_and_the_truth_is_its_definition(additive) -> None:
    case, x, _, truth = additive
    model, stats, reference = case.model, case.stats, case.stats.data
    # additive: the log-odds is the intercept plus one look-up per feature, and the numpy tables agree with torch
    parts = model.contributions(torch.as_tensor(x, dtype=torch.float32)).numpy()
    by_table = np.column_stack([shape(x[:, j].astype(np.float32)) for j, shape in enumerate(model.shapes)])
    np.testing.assert_allclose(parts, by_table, atol=1e-12)
    assert all(isinstance(s, Shape) for s in model.shapes) and any(np.isnan(x).any(axis=0))
    # the truth, row by row from its definition, for two decisions (one with a missing value)
    with_gap = int(np.flatnonzero(np.isnan(x).any(axis=1))[0])
    bins, ref_bins = stats.discretize(x), stats.discretize(reference)
    for b in (0, with_gap):
        own = model(torch.as_tensor(x[b : b + 1], dtype=torch.float32))[0, 1].item()
        for j in range(x.shape[1]):
            other = reference[ref_bins[:, j] != bins[b, j], j]
            rows = np.repeat(x[b : b + 1], len(other), axis=0)
            rows[:, j] = other
            moved = model(torch.as_tensor(rows, dtype=torch.float32))[:, 1].numpy()
            assert truth[b, j] == pytest.approx(own - moved.mean(), abs=1e-12)
    # in log-odds the truth is the shape function's own contrast, whatever the other features: exactly additive
    log_odds = true_contrasts(model, stats, x, reference, scale="log-odds")
    for j, shape in enumerate(model.shapes):
        g_ref, g_x = shape(reference[:, j].astype(np.float32)), shape(x[:, j].astype(np.float32))
        other = ref_bins[:, j][None, :] != bins[:, j][:, None]  # [B, reference rows]
        expected = g_x - (other * g_ref).sum(axis=1) / np.maximum(other.sum(axis=1), 1)
        np.testing.assert_allclose(log_odds[:, j], np.where(other.any(axis=1), expected, 0.0), atol=1e-9)


def test_truth_metrics_counts_and_near_ties() -> None:
    truth = np.array([
        [0.30, 0.20, 0.10, 0.00, -0.1],  # clear top 3: {0, 1, 2}
        [0.30, 0.20, 0.100, 0.098, -0.1],  # 3rd and 4th within 5% of the 3rd: a near-tie
        [0.30, 0.20, -0.10, -0.2, -0.3],  # two features raise it
        [0.30, 0.20, 0.10, 0.05, 0.0],  # approved: not scored
    ])
    features = np.array([[0, 1, 2], [0, 1, 3], [1, 0, -1], [0, 1, 2]])
    weights = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    m = truth_metrics(features, weights, np.array([0.5, 0.5, 0.5, 0.1]), truth, 0.3, 3)
    assert m["declined"] == 3 and m["all_raise"] == 1.0 and m["first"] == pytest.approx(2 / 3)
    assert m["near_ties"] == 1 and m["set_exact"] == pytest.approx(2 / 3) and m["set_tolerant"] == 1.0
    assert m["set_excluding_ties"] == 1.0 and m["short"] == 0
    m = truth_metrics(np.array([[0, 3, -1]]), np.array([[1.0, 0.5, 0.0]]), np.array([0.5]), truth[:1], 0.3, 3)
    assert m["all_raise"] == 0.0 and m["false_reasons"] == 1 and m["short"] == 1 and m["set_exact"] == 0.0


def test_the_default_configuration_lists_the_true_reasons(additive, tmp_path) -> None:
    case, x, ids, truth = additive
    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet"},
        "model": {"entrypoint": "truth:additive_case", "classes": ["approved", "declined"], "explain": "declined"},
        "explain": {"num_samples": SAMPLES, "compile": "never"},
        "report": {"decision_threshold": THRESHOLD},
        "features": [f.model_dump() for f in loan_features()],
    }
    engine = make_explainer(parse_config(raw, tmp_path / "c.toml"), case.stats, case.model)
    out = engine.explain(x, ids)
    m = truth_metrics(out.feature_index, out.weights, out.model_pred, truth, THRESHOLD, K)
    print(m)
    # Measured with the binary kernel-matched method (the default before per-bin): all three pass. 0 false
    # reasons; 1 first miss (A-00016: utilisation listed first, truth 0.071, against debt_to_income's 0.072, a
    # near-tie); set 36/36 of the decisions without a near-tie (4 near-ties). With seeds 1 and 2 instead of the
    # default seed: 1 and 0 first misses, sets 35/36 and 35/36. With the per-bin default (log-odds): 0 false
    # reasons, 1 first miss (a near-tie), set 36/36.
    assert m["declined"] == DECLINED
    assert m["all_raise"] == 1.0, m  # every listed reason truly raises the decline
    assert m["first_misses"] <= 1, m  # the first reason is the true first: >= 98%, at most 1 miss in 40 (strict)
    # the set is the true top 3 for >= 95% of the decisions without a near-tie (at most 1 miss in 36)
    assert m["set_excluding_ties"] >= 0.95, m
