"""Per-bin LIME (tasks/engine/perbin.py; docs/method.md, "Per-bin LIME"): the representation, the contrasts on
models the surrogate can hold exactly, and the ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.engine.matched import kernel_tilt
from tasks.engine.perbin import PerBinLime, log_odds
from tasks.engine.rng import decision_keys

CPU = torch.device("cpu")


class BinModel:
    """A model that depends on each feature's quartile bin or category only, additively, in probability or in
    log-odds: ``score = Σ_j effect[j, bin_j]`` (plus a deterministic, erratic term of the raw inputs, ``noise``,
    that no surrogate can follow). The per-bin surrogate can hold it exactly; its truth is known in closed form."""

    def __init__(self, stats, effects: list[np.ndarray], scale: str, base: float, noise: float = 0.0) -> None:
        self.stats, self.effects, self.scale, self.base, self.noise = stats, effects, scale, base, noise
        self.device, self.description = CPU, "bin model"

    def score(self, bins: np.ndarray) -> np.ndarray:
        return self.base + sum(self.effects[j][bins[:, j]] for j in range(bins.shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.double().numpy()
        score = self.score(self.stats.discretize(rows))
        score = score + self.noise * np.sin(997.0 * np.nan_to_num(rows).sum(1))
        p = 1.0 / (1.0 + np.exp(-score)) if self.scale == "log-odds" else score
        p = torch.as_tensor(p, dtype=torch.float32)
        return torch.stack([1.0 - p, p], dim=1)

    def truth(self, x: np.ndarray) -> np.ndarray:
        """The contrast of every feature [B, d]: the probability at the decision minus its mean with feature j
        moved to another value, drawn with lime's reference frequencies among the other values."""
        own = self.stats.discretize(x)
        at = self._probability(self.score(own))
        out = np.zeros(x.shape)
        for j, feature in enumerate(self.stats.features):
            values, frequencies = np.asarray(feature.values), np.asarray(feature.frequencies)
            for b in range(len(x)):
                others = values != own[b, j]
                moved = own[b].copy()
                mean = 0.0
                for value, frequency in zip(values[others], frequencies[others], strict=True):
                    moved[j] = value
                    mean += frequency * self._probability(self.score(moved[None]))[0]
                out[b, j] = at[b] - mean / frequencies[others].sum()
        return out

    def _probability(self, score: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-score)) if self.scale == "log-odds" else score


def _effects(stats, seed: int, size: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, size, max(f.values) + 1) for f in stats.features]


def _engine(demo, model, target: str, **kwargs) -> PerBinLime:
    settings = dict(stats=demo.stats, model=model, explain_index=1, num_samples=4000, seed=3, stability_runs=2,
                    adaptive=False, adverse_threshold=0.5, deletion_check=False, target=target)
    settings.update(kwargs)
    return PerBinLime(**settings)


def test_the_design_has_one_indicator_per_value_a_feature_moved_to(demo) -> None:
    engine = _engine(demo, BinModel(demo.stats, _effects(demo.stats, 0, 0.05), "probability", 0.3), "probability")
    x, ids = demo.decisions[:4], demo.ids[:4]
    keys, own_rows, decisions = engine._inputs(x, ids)
    tilt = torch.full((4,), kernel_tilt(engine.widths[0]), dtype=torch.float64)
    drawn = engine._sampler.sample(decisions, own_rows, keys, 300, tilt=tilt)
    design = engine._representation(drawn, own_rows, ids)
    columns = engine._sampler.row_features
    assert design.shape == (4, 300, engine.num_columns) and engine.num_columns == int(columns.numel())
    per_feature = torch.zeros(4, 300, demo.stats.num_features).index_add_(2, columns, design)
    # a feature that moved has exactly one indicator, one that stayed none; the applicant (row 0) none at all
    assert torch.equal(per_feature, (~drawn.same_bin).float())
    assert design[:, 0].sum() == 0
    own_columns = own_rows[own_rows >= 0]
    assert design.sum(1)[torch.arange(4).repeat_interleave(demo.stats.num_features)[own_rows.flatten() >= 0],
                          own_columns].sum() == 0


@pytest.mark.parametrize("scale", ["probability", "log-odds"])
def test_contrasts_are_the_truth_on_a_model_of_bins(demo, scale) -> None:
    """On a model additive in its target's scale over the bins, the per-bin surrogate is exact: held-out fidelity
    1, the prediction at the applicant the model's, and every weight the feature's true contrast in probability."""
    base, size = (0.35, 0.04) if scale == "probability" else (-0.6, 0.5)
    model = BinModel(demo.stats, _effects(demo.stats, 1, size), scale, base)
    x, ids = demo.decisions[:12], demo.ids[:12]
    result = _engine(demo, model, scale).explain(x, ids)
    truth = model.truth(x)
    assert np.all(result.fidelity > 0.999)
    assert np.allclose(result.local_pred, result.model_pred, atol=2e-3)
    assert np.allclose(result.intercept + result.all_weights.sum(1), result.local_pred)
    # ridge(alpha = 1) shrinks a rare bin's effect a little: within 2% of the largest contrast
    assert np.abs(result.all_weights - truth).max() <= 0.02 * np.abs(truth).max()
    for b in range(len(x)):
        reasons = [j for j in result.feature_index[b, :3] if j >= 0]
        order = np.argsort(-truth[b] if result.model_pred[b] >= 0.5 else -np.abs(truth[b]), kind="stable")
        assert reasons[0] == order[0]


def test_log_odds_are_clipped_and_finite() -> None:
    y = torch.tensor([0.0, 1e-9, 0.5, 1.0])
    out = log_odds(y)
    assert torch.isfinite(out).all() and out[2] == 0.0 and out[0] == out[1]
    assert torch.isclose(out[3], -out[0]) and abs(float(out[0]) - math.log(1e-6 / (1 - 1e-6))) < 1e-9


def test_reasons_that_cannot_be_separated_are_both_named(demo) -> None:
    """Reasons 3 and 4 with the same true contrast, under noise no surrogate follows: after full adaptation the
    letter names four, the last two tied; a decision with a clear third reason names three."""
    x, ids = demo.decisions[:1], demo.ids[:1]
    own = demo.stats.discretize(x)[0]
    effects = [np.zeros(max(f.values) + 1) for f in demo.stats.features]
    for j, size in zip([0, 1, 2, 3], [0.30, 0.20, 0.08, 0.08], strict=True):
        effects[j][own[j]] = size  # the applicant's own bin raises the decline by `size`; every other bin 0
    tied = BinModel(demo.stats, effects, "probability", 0.45, noise=0.05)
    result = _engine(demo, tied, "probability", num_samples=2000).explain(x, ids)
    assert result.model_pred[0] >= 0.5
    assert result.tied[0] and result.stable[0]
    assert set(result.feature_index[0, :4]) == {0, 1, 2, 3}
    effects[3][own[3]] = 0.0
    clear = BinModel(demo.stats, effects, "probability", 0.45 + 0.08, noise=0.05)
    result = _engine(demo, clear, "probability", num_samples=2000).explain(x, ids)
    assert not result.tied[0] and result.stable[0]
    assert list(result.feature_index[0, :4]) == [0, 1, 2, -1]


def test_a_per_bin_explanation_does_not_depend_on_the_batch(demo) -> None:
    model = BinModel(demo.stats, _effects(demo.stats, 2, 0.4), "log-odds", -0.5, noise=0.3)
    x, ids = demo.decisions[:6], demo.ids[:6]
    engine = _engine(demo, model, "log-odds", num_samples=1200, adaptive=True, max_samples_factor=4)
    together = engine.explain(x, ids)
    alone = engine.explain(x[3:4], ids[3:4])
    assert np.array_equal(together.feature_index[3], alone.feature_index[0])
    assert np.allclose(together.all_weights[3], alone.all_weights[0], atol=1e-12)
    assert decision_keys(3, ids[3:4])[0] == decision_keys(3, ids)[3]


def _strong_features(stats, strong: dict[int, float], seed: int) -> list[np.ndarray]:
    """Small effects everywhere, and large ones on the ``strong`` features."""
    effects = _effects(stats, seed, 0.01)
    for j, size in strong.items():
        effects[j] = np.linspace(-size, size, len(effects[j]))
    return effects


def test_a_wide_model_gives_its_own_columns_to_the_features_that_matter(demo) -> None:
    """With fewer columns than indicators, the features with the largest effects keep one indicator per value, the
    others one "moved" column; every feature's weight is still its contrast (a moved column's coefficient is the
    mean effect of moving, which is the contrast in an additive model)."""
    d = demo.stats.num_features
    strong = {1: 0.12, 4: 0.08}
    model = BinModel(demo.stats, _strong_features(demo.stats, strong, 4), "probability", 0.4)
    engine = _engine(demo, model, "probability", max_columns=d + 8)
    assert engine.wide and engine.design_columns == d + 8 < engine.num_columns
    x, ids = demo.decisions[:8], demo.ids[:8]
    layout = engine._pilot_layouts(x, ids)
    assert layout.expanded[:, list(strong)].all()
    assert (layout.column_of_row.max(1).values < d + 8).all()
    keys, own_rows, decisions = engine._inputs(x, ids)
    engine._layouts = (layout, {decision: i for i, decision in enumerate(ids)})
    drawn = engine._sampler.sample(decisions, own_rows, keys, 200, tilt=torch.full((8,), 0.5, dtype=torch.float64))
    design = engine._representation(drawn, own_rows, ids)
    per_feature = torch.zeros(8, 200, d).scatter_add_(2, layout.column_feature.unsqueeze(1).expand(-1, 200, -1),
                                                       design)
    assert torch.equal(per_feature, (~drawn.same_bin).float())  # one 1 per feature that moved, wherever it goes
    engine._layouts = None
    result = engine.explain(x, ids)
    truth = model.truth(x)
    assert np.all(result.fidelity > 0.95)  # the small effects within "moved" are what it cannot hold
    assert np.abs(result.all_weights - truth).max() <= 0.03 * np.abs(truth).max()
    assert np.allclose(result.intercept + result.all_weights.sum(1), result.local_pred)


def test_a_wide_explanation_does_not_depend_on_the_batch(demo) -> None:
    model = BinModel(demo.stats, _effects(demo.stats, 5, 0.4), "log-odds", -0.5, noise=0.3)
    x, ids = demo.decisions[:6], demo.ids[:6]
    engine = _engine(demo, model, "log-odds", num_samples=1200, max_columns=demo.stats.num_features + 6)
    together, alone = engine.explain(x, ids), engine.explain(x[2:3], ids[2:3])
    assert np.array_equal(together.feature_index[2], alone.feature_index[0])
    assert np.allclose(together.all_weights[2], alone.all_weights[0], atol=1e-12)
