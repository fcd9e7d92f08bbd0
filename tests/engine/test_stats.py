"""Fitting on the reference population gives exactly lime's discretiser and sampling statistics."""

import numpy as np
import pytest
from lime.discretize import QuartileDiscretizer
from lime.lime_tabular import LimeTabularExplainer
from scipy import stats as scipy_stats

from tasks.engine import fit_reference
from tasks.engine.stats import GRID_INTERVALS, _inverse_cdf_row
from tasks.inputs.config import FeatureConfig


def lime_explainer(demo) -> LimeTabularExplainer:
    categorical = [j for j, f in enumerate(demo.features) if f.kind == "categorical"]
    return LimeTabularExplainer(
        demo.reference,
        feature_names=[f.name for f in demo.features],
        categorical_features=categorical,
        categorical_names={j: demo.features[j].categories for j in categorical},
        discretize_continuous=True,
        random_state=0,
    )


def test_bins_equal_lime(demo) -> None:
    categorical = [j for j, f in enumerate(demo.features) if f.kind == "categorical"]
    names = [f.name for f in demo.features]
    lime = QuartileDiscretizer(demo.reference, categorical, names, random_state=0)
    for j, feature in enumerate(demo.stats.features):
        if feature.kind == "categorical":
            assert j not in lime.names
            continue
        assert list(feature.bin_names) == lime.names[j]
        np.testing.assert_array_equal(feature.means, lime.means[j])
        np.testing.assert_array_equal(feature.stds, lime.stds[j])
        np.testing.assert_array_equal(feature.mins, lime.mins[j])
        np.testing.assert_array_equal(feature.maxs, lime.maxs[j])


def test_frequencies_and_kernel_width_equal_lime(demo) -> None:
    lime = lime_explainer(demo)
    for j, feature in enumerate(demo.stats.features):
        assert list(feature.values) == [int(v) for v in lime.feature_values[j]]
        np.testing.assert_allclose(feature.frequencies, lime.feature_frequencies[j], rtol=1e-12)
    assert demo.stats.kernel_width == pytest.approx(np.sqrt(len(demo.features)) * 0.75)


def test_conditions_equal_lime_names(demo) -> None:
    lime = lime_explainer(demo)
    for row in demo.decisions[:25]:
        explanation = lime.explain_instance(row, lambda r: np.column_stack([1 - r[:, 0] * 0, r[:, 0] * 0]),
                                            num_features=len(demo.features), num_samples=50)
        names = explanation.domain_mapper.discretized_feature_names
        assert [f.condition(row[j]) for j, f in enumerate(demo.stats.features)] == names


def test_condition_texts_look_like_lime() -> None:
    age = np.array([20, 30, 35, 35, 40, 47, 50, 55, 60, 61, 70, 80], dtype=float)
    housing = np.array([0, 1, 2, 1, 1, 0, 0, 2, 1, 1, 0, 0], dtype=float)
    features = [
        FeatureConfig(name="age", label="Age", kind="numeric"),
        FeatureConfig(name="housing", label="Housing", kind="categorical", categories=["own", "rent", "free"]),
    ]
    stats = fit_reference(np.column_stack([age, housing]), features)
    edges = stats.features[0].edges
    assert stats.features[0].condition(18) == f"age <= {edges[0]:.2f}"
    assert stats.features[0].condition(edges[0] + 0.01) == f"{edges[0]:.2f} < age <= {edges[1]:.2f}"
    assert stats.features[0].condition(99) == f"age > {edges[-1]:.2f}"
    assert stats.features[1].condition(1) == "housing=rent"


def test_truncated_normal_table_matches_scipy(demo) -> None:
    """The look-up table draws what scipy.stats.truncnorm draws inside a bin (lime's undiscretiser)."""
    feature = next(f for f in demo.stats.features if f.name == "annual_income")
    grid = np.linspace(0, 1, GRID_INTERVALS + 1)
    rng = np.random.default_rng(0)
    for b in feature.values:
        table = _inverse_cdf_row(feature, b, grid)
        u = rng.random(20000)
        position = u * GRID_INTERVALS
        cell = np.minimum(np.floor(position).astype(int), GRID_INTERVALS - 1)
        ours = table[cell] + (position - cell) * (table[cell + 1] - table[cell])
        mean, std = feature.means[b], feature.stds[b]
        a, z = (feature.mins[b] - mean) / std, (feature.maxs[b] - mean) / std
        result = scipy_stats.kstest(ours, scipy_stats.truncnorm(a, z, loc=mean, scale=std).cdf)
        assert result.pvalue > 1e-3
        assert ours.min() >= feature.mins[b] and ours.max() <= feature.maxs[b]


def test_deviation_single_value_bin_keeps_its_value() -> None:
    """lime 0.2.0.1 returns the z-score (min - mean)/std for a bin whose min equals its max; we return the value.

    Here half the reference has history_years == 2.0, so bin 0 (x <= 2.00) holds only 2.0: lime perturbs those
    samples to 0.0 — a value no applicant has — while limelight keeps 2.0.
    """
    rng = np.random.default_rng(1)
    column = np.where(rng.random(400) < 0.5, 2.0, rng.uniform(2.5, 30, 400))
    features = [FeatureConfig(name="history_years", label="History", kind="numeric")]
    reference = column.reshape(-1, 1)
    lime = QuartileDiscretizer(reference, [], ["history_years"], random_state=0)
    lime_values = lime.undiscretize(np.zeros((100, 1)))[:, 0]
    assert np.all(lime_values == 0.0)  # lime's bug: a z-score, not a history length
    feature = fit_reference(reference, features).features[0]
    ours = _inverse_cdf_row(feature, 0, np.linspace(0, 1, 11))
    assert np.all(ours == 2.0)
