"""Kernel-matched LIME (tasks/engine/matched.py; docs/method.md, "Kernel-matched LIME")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.engine.matched import KernelMatchedLime, kernel_tilt
from tasks.engine.rng import decision_keys
from tasks.engine.sampler import QuartileSampler
from tasks.engine.stability import ranked_factors, reason_margin
from tasks.engine.surrogate import (
    WeightedMoments,
    held_out_r2,
    kernel_moments,
    ridge_on,
    uniform_moments,
    weighted_moments,
)

CPU = torch.device("cpu")


def _draw(demo, rows: slice, samples: int, tilt: float | None, design: str = "random", seed: int = 7):
    sampler = QuartileSampler(demo.stats, CPU, design=design)
    x = demo.decisions[rows]
    ids = demo.ids[rows]
    own_rows = torch.as_tensor(sampler.own_rows(demo.stats.discretize(x)))
    keys = torch.as_tensor(decision_keys(seed, ids))
    tilts = None if tilt is None else torch.full((len(x),), tilt, dtype=torch.float64)
    perturbed = sampler.sample(torch.as_tensor(x, dtype=torch.float32), own_rows, keys, samples, tilt=tilts)
    return sampler, own_rows, x, perturbed


@pytest.mark.parametrize("design", ["random", "sobol"])
def test_leave_frequency_is_the_kernel_tilted_probability(demo, design) -> None:
    """Each feature leaves the decision's bin with p c / (p c + 1 - p), and a feature that stays keeps the
    decision's own value."""
    width = 0.2 * math.sqrt(demo.stats.num_features)
    tilt = kernel_tilt(width)
    samples = 40_000
    sampler, own_rows, x, perturbed = _draw(demo, slice(0, 3), samples, tilt, design)
    expected = sampler.leave_probability(own_rows, torch.full((3,), tilt, dtype=torch.float64)).numpy()
    observed = 1.0 - perturbed.same_bin[:, 1:].double().mean(1).numpy()
    se = np.sqrt(expected * (1 - expected) / samples)
    assert np.all(np.abs(observed - expected) <= 5 * se + 1e-4), (observed, expected)
    inputs, same = perturbed.inputs.numpy(), perturbed.same_bin.numpy()
    own = np.broadcast_to(x[:, None, :].astype(np.float32), inputs.shape)
    assert np.array_equal(inputs[same], own[same])  # the applicant's own values, not redrawn in the bin


def test_other_bins_keep_lime_proportions(demo) -> None:
    """Given that a feature leaves the decision's bin, the bin drawn follows the reference frequencies of the
    other bins, as lime's draw does (chi-square)."""
    from scipy.stats import chisquare

    sampler, own_rows, x, perturbed = _draw(demo, slice(5, 6), 60_000, kernel_tilt(0.35 * math.sqrt(12)))
    bins = demo.stats.discretize(perturbed.inputs[0, 1:].double().numpy())
    own = demo.stats.discretize(x)[0]
    for j, feature in enumerate(demo.stats.features):
        values, freqs = np.asarray(feature.values), np.asarray(feature.frequencies)
        other = values != own[j]
        left = bins[:, j][bins[:, j] != own[j]]
        if len(left) < 200 or other.sum() < 2:
            continue
        counts = np.array([(left == v).sum() for v in values[other]])
        expected = freqs[other] / freqs[other].sum() * len(left)
        assert chisquare(counts, expected).pvalue > 1e-4, feature.name


def _binary_target(same_bin: torch.Tensor) -> torch.Tensor:
    """A model of the binary representation alone (so the in-bin values do not matter): non-linear, with an
    interaction."""
    z = same_bin.double()
    score = 0.8 * z[..., 0] - 0.5 * z[..., 1] + 0.3 * z[..., 2] * z[..., 3] - 0.2 * z[..., 4] + 0.1 * z[..., 9]
    return torch.sigmoid(score)


def test_kernel_matched_sampling_estimates_lime_population_fit(demo) -> None:
    """At the same width, lime's weighted fit and the kernel-matched unweighted fit estimate the same population
    weighted least-squares problem: their coefficients agree within Monte Carlo error."""
    width = 0.35 * math.sqrt(demo.stats.num_features)
    _, _, _, lime_draw = _draw(demo, slice(0, 2), 400_000, None, seed=1)
    _, _, _, matched_draw = _draw(demo, slice(0, 2), 100_000, kernel_tilt(width), seed=2)
    lime_m = WeightedMoments(*kernel_moments(lime_draw.same_bin, _binary_target(lime_draw.same_bin), width))
    matched_m = WeightedMoments(*uniform_moments(matched_draw.same_bin, _binary_target(matched_draw.same_bin)))
    every = torch.arange(demo.stats.num_features).expand(2, -1)
    # the population fit: a vanishing ridge, scaled to each side's total weight
    lime_fit = ridge_on(lime_m, every, 1e-6)
    matched_fit = ridge_on(matched_m, every, 1e-6)
    difference = (lime_fit.coef - matched_fit.coef).abs()
    assert difference.max() < 0.02, difference
    assert (lime_fit.intercept - matched_fit.intercept).abs().max() < 0.02


def test_held_out_r2_equals_the_direct_computation(demo) -> None:
    generator = torch.Generator().manual_seed(3)
    z = torch.rand(2, 500, 6, generator=generator) < 0.7
    y = _binary_target(torch.cat([z, z], dim=-1)) + 0.05 * torch.randn(2, 500, generator=generator, dtype=torch.float64)
    w = torch.ones(2, 500, dtype=torch.float64)
    fit_part, test_part = slice(0, 250), slice(250, 500)
    every = torch.arange(6).expand(2, -1)
    fit = ridge_on(weighted_moments(z[:, fit_part], y[:, fit_part], w[:, fit_part]), every, 1.0)
    score = held_out_r2(fit, weighted_moments(z[:, test_part], y[:, test_part], w[:, test_part]))
    prediction = fit.intercept[:, None] + (z[:, test_part].double() * fit.coef[:, None, :]).sum(-1)
    target = y[:, test_part]
    direct = 1 - ((target - prediction) ** 2).sum(1) / ((target - target.mean(1, keepdim=True)) ** 2).sum(1)
    assert torch.allclose(score, direct, atol=1e-10)


def test_ranked_factors_name_only_adverse_factors_as_reasons() -> None:
    coef = torch.tensor([[0.3, -0.5, 0.1, 0.0, 0.2], [-0.1, -0.2, 0.05, -0.3, -0.4], [0.3, -0.5, 0.1, 0.0, 0.2]],
                        dtype=torch.float64)
    adverse = torch.tensor([True, True, False])
    reasons, favourable = ranked_factors(coef, adverse, 3)
    assert reasons.tolist() == [[0, 4, 2], [2, -1, -1], [1, 0, 4]]
    assert favourable.tolist() == [[1, -1, -1], [4, 3, 1], [-1, -1, -1]]


def test_reason_margin_is_the_distance_to_a_change_of_reasons() -> None:
    """Adverse with k reasons: the k-th reason's lead over the next feature and over zero; with fewer: the
    weakest reason's weight and the strongest other's distance below zero."""
    d = 4
    czz = torch.eye(d, dtype=torch.float64).expand(2, d, d) * 1e6  # ridge(alpha=1) ~ czy / 1e6 exactly enough
    czy = torch.tensor([[0.5, 0.3, 0.2, 0.1], [0.4, -0.1, -0.3, -0.2]], dtype=torch.float64) * 1e6
    m = WeightedMoments(torch.full((2,), 1e6, dtype=torch.float64), torch.zeros(2, d, dtype=torch.float64),
                        torch.zeros(2, dtype=torch.float64), czz.clone(), czy, torch.ones(2, dtype=torch.float64))
    adverse = torch.tensor([True, True])
    reasons, _ = ranked_factors(torch.linalg.solve(czz + torch.eye(d), czy.unsqueeze(-1)).squeeze(-1), adverse, 3)
    assert reasons.tolist() == [[0, 1, 2], [0, -1, -1]]
    margin = reason_margin(m, reasons, adverse, 3)
    assert margin.tolist() == pytest.approx([0.1, 0.1], abs=1e-5)


@pytest.fixture(scope="module")
def matched(demo):
    def make(**kwargs) -> KernelMatchedLime:
        settings = dict(stats=demo.stats, model=demo.model, explain_index=1, num_samples=1200, seed=11,
                        stability_runs=2, adaptive=False, adverse_threshold=0.4, deletion_check=False)
        settings.update(kwargs)
        return KernelMatchedLime(**settings)

    return make


def test_reasons_of_a_declined_decision_raised_its_probability(matched, demo) -> None:
    x, ids = demo.decisions[:40], demo.ids[:40]
    result = matched().explain(x, ids)
    k, slots = 3, 4  # k reason slots and one for a tie, then the favourable factors
    adverse = result.model_pred >= 0.4
    assert adverse.any() and (~adverse).any()
    reasons, favourable = result.feature_index[:, :slots], result.feature_index[:, slots:]
    reason_w, favourable_w = result.weights[:, :slots], result.weights[:, slots:]
    assert result.feature_index.shape[1] == slots + k
    assert np.all(reason_w[adverse][reasons[adverse] >= 0] > 0)
    assert np.all(favourable_w[adverse][favourable[adverse] >= 0] < 0)
    assert np.all(favourable[~adverse] == -1)
    assert np.all(reasons[~adverse, :k] >= 0)  # the other outcome: the main factors, either direction
    assert np.all((reasons[:, k] >= 0) == result.tied)  # the tie slot is used exactly where reasons tie
    # every fit is on all features, and the factors shown are its coefficients
    shown = reasons[0][reasons[0] >= 0]
    assert np.allclose(result.all_weights[0, shown], reason_w[0][: len(shown)])
    assert set(np.round(result.kernel_width / math.sqrt(12), 6)) <= {0.75, 0.35, 0.2, 0.12, 0.08}
    assert np.all(result.num_samples >= 1200)
    assert np.all((result.effective_samples > 0) & (result.effective_samples <= result.num_samples))


def test_the_surrogate_reproduces_the_decision_at_narrow_widths(matched, demo) -> None:
    """With the applicant's own values kept, the surrogate's prediction at the applicant approaches the model's
    as the kernel narrows (lime's redraw inside the bin cannot: it explains the bin's average)."""
    x, ids = demo.decisions[:30], demo.ids[:30]
    wide = matched(width_grid=(0.75,), target_fidelity=0.0).explain(x, ids)
    narrow = matched(width_grid=(0.12,), target_fidelity=0.0).explain(x, ids)
    gap_wide = np.median(np.abs(wide.local_pred - wide.model_pred))
    gap_narrow = np.median(np.abs(narrow.local_pred - narrow.model_pred))
    assert gap_narrow < 0.02 and gap_narrow < gap_wide / 2


def test_widest_first_and_fallback_to_the_widest(matched, demo) -> None:
    x, ids = demo.decisions[:12], demo.ids[:12]
    easy = matched(target_fidelity=0.0).explain(x, ids)
    assert np.allclose(easy.kernel_width, 0.75 * math.sqrt(12))  # the first width passes: lime's default
    impossible = matched(target_fidelity=1.0).explain(x, ids)
    assert np.allclose(impossible.kernel_width, 0.75 * math.sqrt(12))  # none passes: keep the widest
    assert np.all(impossible.fidelity < 1.0)
    assert np.allclose(impossible.fidelity_widest, easy.fidelity_widest)


def test_same_decision_same_explanation_in_any_batch(matched, demo) -> None:
    x, ids = demo.decisions[:6], demo.ids[:6]
    engine = matched(adaptive=True, max_samples_factor=4)
    batch = engine.explain(x, ids)
    alone = engine.explain(x[3:4], ids[3:4])
    for name in ("feature_index", "weights", "fidelity", "local_pred", "kernel_width", "num_samples", "stable"):
        assert np.array_equal(getattr(batch, name)[3:4], getattr(alone, name)), name


def test_needs_two_streams(demo) -> None:
    with pytest.raises(ValueError, match="stability_runs >= 2"):
        KernelMatchedLime(stats=demo.stats, model=demo.model, explain_index=1, stability_runs=1)


def test_compiled_kernels_give_the_same_explanations(matched, demo) -> None:
    """torch.compile fuses the tilted draw and the unweighted moments; the factors are the same and the numbers
    match eager to float32 rounding."""
    from tasks.engine.factory import compile_enabled

    if not compile_enabled("auto", torch.device("cpu")):
        pytest.skip("no C++ compiler for torch.compile on this machine")
    x, ids = demo.decisions[:10], demo.ids[:10]
    eager = matched().explain(x, ids)
    fused_engine = matched(compile=True)
    fused = fused_engine.explain(x, ids)
    assert fused_engine.compile  # it did not fall back to eager
    assert np.array_equal(eager.feature_index, fused.feature_index)
    assert np.allclose(eager.weights, fused.weights, atol=1e-6) and np.allclose(eager.fidelity, fused.fidelity,
                                                                                   atol=1e-6)
