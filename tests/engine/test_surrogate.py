"""The batched surrogate equals lime's sklearn fits on the same samples."""

import numpy as np
import pytest
import torch
from lime.lime_base import LimeBase
from sklearn.linear_model import Ridge

from tasks.engine.surrogate import (
    forward_selection,
    highest_weights,
    ridge_on,
    select_features,
    weighted_moments,
)


def lime_like_samples(seed: int, batch: int = 6, samples: int = 3000, d: int = 9):
    """Binary samples, a non-linear target and lime's kernel weights, like lime's default path."""
    rng = np.random.default_rng(seed)
    p_same = rng.uniform(0.15, 0.85, size=(batch, 1, d))
    z = (rng.random((batch, samples, d)) < p_same).astype(np.float64)
    z[:, 0] = 1.0
    coef = rng.normal(0, 0.1, size=(batch, 1, d)) * (rng.random((batch, 1, d)) < 0.6)
    y = 1 / (1 + np.exp(-(z * coef).sum(-1) * 4 - 0.3 * z[..., 0] * z[..., 1] - rng.normal(0, 0.2, (batch, samples))))
    width = 0.75 * np.sqrt(d)
    weights = np.sqrt(np.exp(-(d - z.sum(-1)) / width**2))
    return z, y, weights


def test_final_ridge_equals_sklearn_with_sample_weights() -> None:
    z, y, w = lime_like_samples(0)
    m = weighted_moments(torch.as_tensor(z), torch.as_tensor(y), torch.as_tensor(w))
    chosen = torch.tensor([[0, 3, 5], [1, 2, 8], [4, 6, 7], [0, 1, 2], [8, 7, 6], [2, 4, 6]])
    fit = ridge_on(m, chosen, alpha=1.0)
    for b in range(len(z)):
        columns = chosen[b].numpy()
        reference = Ridge(alpha=1.0, fit_intercept=True).fit(z[b][:, columns], y[b], sample_weight=w[b])
        score = reference.score(z[b][:, columns], y[b], sample_weight=w[b])
        local_pred = reference.predict(z[b][0:1, columns])[0]
        np.testing.assert_allclose(fit.coef[b].numpy(), reference.coef_, atol=1e-9, rtol=1e-6)
        assert fit.intercept[b].item() == pytest.approx(reference.intercept_, abs=1e-9)
        assert fit.score[b].item() == pytest.approx(score, abs=1e-9)
        assert (fit.intercept[b] + fit.coef[b].sum()).item() == pytest.approx(local_pred, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_forward_selection_picks_what_lime_picks(seed: int) -> None:
    z, y, w = lime_like_samples(seed)
    m = weighted_moments(torch.as_tensor(z), torch.as_tensor(y), torch.as_tensor(w))
    ours = forward_selection(m, 5).numpy()
    base = LimeBase(kernel_fn=lambda d: d, random_state=0)
    for b in range(len(z)):
        theirs = base.feature_selection(z[b], y[b], w[b], 5, "forward_selection")
        assert list(ours[b]) == [int(f) for f in theirs]


@pytest.mark.parametrize("seed", range(3))
def test_highest_weights_picks_what_lime_picks(seed: int) -> None:
    z, y, w = lime_like_samples(seed, d=12)
    m = weighted_moments(torch.as_tensor(z), torch.as_tensor(y), torch.as_tensor(w))
    ours = highest_weights(m, 8).numpy()
    base = LimeBase(kernel_fn=lambda d: d, random_state=0)
    for b in range(len(z)):
        theirs = base.feature_selection(z[b], y[b], w[b], 8, "highest_weights")
        assert list(ours[b]) == [int(f) for f in theirs]


def test_auto_switches_like_lime() -> None:
    z, y, w = lime_like_samples(1, d=12)
    m = weighted_moments(torch.as_tensor(z), torch.as_tensor(y), torch.as_tensor(w))
    assert torch.equal(select_features(m, 6, "auto"), forward_selection(m, 6))
    assert torch.equal(select_features(m, 7, "auto"), highest_weights(m, 7))


def test_explain_instance_with_data_matches_lime() -> None:
    """The whole surrogate step: lime's explain_instance_with_data vs ours on identical samples."""
    z, y, w = lime_like_samples(7)
    d = z.shape[-1]
    width = 0.75 * np.sqrt(d)
    distances = np.sqrt(d - z.sum(-1))
    m = weighted_moments(torch.as_tensor(z), torch.as_tensor(y), torch.as_tensor(w))
    fit = ridge_on(m, forward_selection(m, 3), alpha=1.0)
    base = LimeBase(kernel_fn=lambda dist: np.sqrt(np.exp(-(dist**2) / width**2)), random_state=0)
    for b in range(len(z)):
        labels = np.column_stack([1 - y[b], y[b]])
        intercept, exp, score, local_pred = base.explain_instance_with_data(z[b], labels, distances[b], 1, 3)
        ours = sorted(zip(fit.features[b].tolist(), fit.coef[b].tolist(), strict=True), key=lambda p: -abs(p[1]))
        assert [f for f, _ in ours] == [int(f) for f, _ in exp]
        np.testing.assert_allclose([c for _, c in ours], [c for _, c in exp], atol=1e-9)
        assert fit.intercept[b].item() == pytest.approx(intercept, abs=1e-9)
        assert fit.score[b].item() == pytest.approx(score, abs=1e-9)
        assert (fit.intercept[b] + fit.coef[b].sum()).item() == pytest.approx(local_pred[0], abs=1e-9)


def test_constant_feature_adds_nothing_and_is_not_preferred() -> None:
    z, y, w = lime_like_samples(3, batch=2)
    z[:, :, 2] = 1.0  # this feature's bin never changes: constant column
    m = weighted_moments(torch.as_tensor(z), torch.as_tensor(y), torch.as_tensor(w))
    chosen = forward_selection(m, 3).numpy()
    base = LimeBase(kernel_fn=lambda d: d, random_state=0)
    for b in range(2):
        assert 2 not in chosen[b]
        assert list(chosen[b]) == [int(f) for f in base.feature_selection(z[b], y[b], w[b], 3, "forward_selection")]
