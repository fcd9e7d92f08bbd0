"""Missing values as data (docs/method.md, "Missing values"): the missing slot in the statistics, its sampling
frequency, the interpretable feature of a decision missing a value, the deletion check, the model's NaN probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.engine import BatchedLime, fit_reference
from tasks.engine.deletion import DeletionCheck
from tasks.engine.stats import GRID_INTERVALS, _categorical_stats, _numeric_stats
from tasks.errors import ModelError
from tasks.inputs.model import LoadedModel, check_missing_contract

INCOME, HOUSING = 0, 10  # a numeric and a categorical demo feature


def with_gaps(reference: np.ndarray, shares: dict[int, float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = reference.copy()
    for j, share in shares.items():
        out[rng.random(len(out)) < share, j] = np.nan
    return out


def nan_safe(model: LoadedModel) -> LoadedModel:
    """The demo model behind an imputation of NaN by 0 (a model that handles missing values)."""
    return LoadedModel(lambda x: model(torch.nan_to_num(x, nan=0.0)), device=model.device, num_features=12,
                       output="probabilities", sha256="test", description="nan-safe demo model")


@pytest.fixture(scope="module")
def gappy(demo):
    reference = with_gaps(demo.reference, {INCOME: 0.1, HOUSING: 0.05})
    return reference, fit_reference(reference, demo.features)


def test_missing_slot_holds_the_reference_share_and_present_values_keep_their_statistics(demo, gappy) -> None:
    reference, stats = gappy
    for j in (INCOME, HOUSING):
        feature, complete = stats.features[j], demo.stats.features[j]
        gaps = np.isnan(reference[:, j])
        assert feature.values[-1] == feature.missing_value and feature.missing_value not in complete.values
        assert feature.missing_frequency == gaps.mean() and sum(feature.frequencies) == pytest.approx(1.0)
        column = reference[~gaps, j]
        present = (_numeric_stats(feature.name, column) if feature.kind == "numeric"
                   else _categorical_stats(feature.name, column, feature.categories))
        assert feature.values[:-1] == present.values  # bins over the present values only
        np.testing.assert_allclose(np.asarray(feature.frequencies[:-1]) / (1 - gaps.mean()), present.frequencies,
                                   rtol=1e-12)
        assert (feature.edges, feature.means, feature.stds, feature.mins, feature.maxs) == (
            present.edges, present.means, present.stds, present.mins, present.maxs)
    for j in set(range(12)) - {INCOME, HOUSING}:  # other features: exactly as without gaps
        assert stats.features[j] == demo.stats.features[j]
    assert fit_reference(demo.reference, demo.features) == demo.stats  # complete data: lime's statistics


def test_missing_fail_features_ignore_the_reference_gaps(demo, gappy) -> None:
    reference, _ = gappy
    features = [f.model_copy(update={"missing": "fail"}) if j == INCOME else f for j, f in enumerate(demo.features)]
    income = fit_reference(reference, features).features[INCOME]
    assert income.missing_frequency == 0.0 and income.missing_value not in income.values


def test_discretize_condition_and_the_nan_row_of_the_sampling_table(gappy) -> None:
    _, stats = gappy
    income, housing = stats.features[INCOME], stats.features[HOUSING]
    x = np.array([[np.nan] + [0.0] * 9 + [np.nan, 0.0], [30_000.0] + [0.0] * 9 + [2.0, 0.0]])
    bins = stats.discretize(x)
    assert bins[0, INCOME] == income.missing_value == len(income.bin_names)
    assert bins[0, HOUSING] == housing.missing_value == len(housing.categories)
    assert bins[1, HOUSING] == 2 and bins[1, INCOME] == income.bin_of(30_000.0) < income.missing_value
    assert income.condition(np.nan) == "annual_income is missing" and housing.condition(np.nan) == "housing is missing"
    values, _, inverse_cdf = stats.sampling_tables()
    slot = list(values[INCOME]).index(income.missing_value)
    assert inverse_cdf[INCOME, slot].shape == (GRID_INTERVALS + 1,) and np.isnan(inverse_cdf[INCOME, slot]).all()
    assert not np.isnan(np.delete(inverse_cdf[INCOME], slot, axis=0)[: len(income.values) - 1]).any()


@pytest.mark.parametrize("design", ["sobol", "random"])
def test_samples_are_missing_at_the_reference_frequency(demo, gappy, design) -> None:
    """Share of samples with NaN per feature vs. the reference share. Random design: independent Bernoulli
    draws, so within 5 standard errors (a false alarm about once in 3.5 million runs); Sobol design: the first
    2^m points of a stream hit each frequency interval within 1/2^m, so within 2/S."""
    _, stats = gappy
    lime = BatchedLime(stats=stats, model=nan_safe(demo.model), explain_index=1, design=design,
                       deletion_check=False)
    x = demo.decisions[:4].copy()
    x[0, INCOME], x[1, HOUSING] = np.nan, np.nan
    keys, own_rows, decisions = lime._inputs(x, [f"d{i}" for i in range(4)])
    samples = 1 << 14
    drawn = lime._sampler.sample(decisions, own_rows, keys, samples + 1)
    for j in (INCOME, HOUSING):
        p = stats.features[j].missing_frequency
        share = torch.isnan(drawn.inputs[:, 1:, j]).double().mean(1).cpu().numpy()
        tolerance = 5 * np.sqrt(p * (1 - p) / samples) if design == "random" else 2 / samples
        np.testing.assert_array_less(np.abs(share - p), tolerance)
    # the binary representation: 1 exactly where a sample is missing too, for a decision missing the value
    assert torch.equal(drawn.same_bin[0, 1:, INCOME], torch.isnan(drawn.inputs[0, 1:, INCOME]))
    assert torch.equal(drawn.same_bin[1, 1:, HOUSING], torch.isnan(drawn.inputs[1, 1:, HOUSING]))
    assert torch.isnan(drawn.inputs[0, 0, INCOME])  # row 0: the decision itself


def test_a_decision_missing_a_value_is_explained_and_its_factor_is_the_missing_value(demo, gappy) -> None:
    _, stats = gappy
    x = demo.decisions[:6].copy()
    x[:3, INCOME] = np.nan
    lime = BatchedLime(stats=stats, model=nan_safe(demo.model), explain_index=1, num_samples=2000)
    out = lime.explain(x, [f"d{i}" for i in range(6)])
    assert np.isfinite(out.weights).all() and np.isfinite(out.fidelity).all()
    assert np.isfinite(out.deletion_delta).all()
    # the imputed model sees 0 income, a strong reason: it is among the top factors of those decisions
    assert all(INCOME in row for row in out.feature_index[:3])


def test_deletion_check_replaces_a_present_value_by_missing_at_its_frequency(gappy) -> None:
    _, stats = gappy
    check = DeletionCheck(stats)
    x = np.array([[30_000.0] + [1.0] * 9 + [2.0, 1.0]])
    rows, weights, _ = check.rows(x, np.array([[INCOME]]))
    income = stats.features[INCOME]
    own = income.bin_of(30_000.0)
    others = [f for v, f in zip(income.values, income.frequencies, strict=True) if v != own]
    assert np.isnan(rows[:, INCOME]).sum() == 1
    assert weights[np.isnan(rows[:, INCOME])][0] == pytest.approx(income.missing_frequency / sum(others))
    rows, _, _ = check.rows(np.where(np.arange(12) == INCOME, np.nan, x), np.array([[INCOME]]))
    assert not np.isnan(rows[:, INCOME]).any()  # removing "missing": a present value


def test_the_model_is_probed_with_nan_where_the_reference_has_gaps(demo, gappy) -> None:
    _, stats = gappy
    probe, names = stats.missing_probe()
    assert names == ["annual_income", "housing"] and probe.shape == (3, 12)
    assert np.isnan(probe).sum(1).tolist() == [1, 1, 2]
    check_missing_contract(nan_safe(demo.model), probe, names)
    with pytest.raises(ModelError) as error:
        check_missing_contract(demo.model, probe, names)  # the plain demo model propagates NaN
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"{demo.model_path}: returns non-finite output when 'annual_income' is missing (NaN), as in the reference "
        "and so in LIME's samples: use a model that handles NaN, or set [[features]] missing = \"fail\" for "
        "'annual_income' (a decision missing it then fails alone)")
    assert demo.stats.missing_probe()[1] == []  # a complete reference: nothing to probe


def test_only_all_missing_at_once_can_fail_too(demo, gappy) -> None:
    _, stats = gappy

    def breaks_on_two(x: torch.Tensor) -> torch.Tensor:
        out = demo.model(torch.nan_to_num(x))
        return torch.where(torch.isnan(x).sum(1, keepdim=True) > 1, torch.nan, out)

    model = LoadedModel(breaks_on_two, device=demo.model.device, num_features=12, output="probabilities",
                        sha256="t", description="m")
    with pytest.raises(ModelError, match=r"m: returns non-finite output when 'annual_income', 'housing' are missing"):
        check_missing_contract(model, *stats.missing_probe())



def test_kernel_matched_keeps_a_missing_own_value_and_tilts_the_missing_slot(demo, gappy) -> None:
    """The default method on a reference with gaps: a decision missing its income keeps it missing wherever the
    feature stays in its 'bin' (the model sees NaN), leaves it with the kernel-tilted probability, and is
    explained with finite numbers."""
    import math

    from tasks.engine.matched import KernelMatchedLime, kernel_tilt
    from tasks.engine.rng import decision_keys
    from tasks.engine.sampler import QuartileSampler

    _, stats = gappy
    x = demo.decisions[:4].copy()
    x[:2, INCOME] = np.nan
    sampler = QuartileSampler(stats, "cpu", design="random")
    own = torch.as_tensor(sampler.own_rows(stats.discretize(x)))
    tilt = kernel_tilt(0.2 * math.sqrt(stats.num_features))
    tilts = torch.full((4,), tilt, dtype=torch.float64)
    keys = torch.as_tensor(decision_keys(3, list("abcd")))
    drawn = sampler.sample(torch.as_tensor(x, dtype=torch.float32), own, keys, 20_000, tilt=tilts)
    stays = drawn.same_bin[:2, 1:, INCOME]
    assert torch.isnan(drawn.inputs[:2, 1:, INCOME][stays]).all()
    assert not torch.isnan(drawn.inputs[:2, 1:, INCOME][~stays]).any()
    expected = sampler.leave_probability(own, tilts)[:2, INCOME].numpy()
    observed = 1.0 - stays.double().mean(1).numpy()
    assert np.all(np.abs(observed - expected) <= 5 * np.sqrt(expected * (1 - expected) / 20_000) + 1e-4)
    out = KernelMatchedLime(stats=stats, model=nan_safe(demo.model), explain_index=1, num_samples=1200,
                            stability_runs=2, adaptive=False, adverse_threshold=0.4).explain(x, list("abcd"))
    assert np.isfinite(out.weights).all() and np.isfinite(out.fidelity).all() and np.isfinite(out.local_pred).all()
