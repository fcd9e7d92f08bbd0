"""Per-bin LIME (``[explain] method = "per-bin"``, the default): a LIME-family representation, not lime's.

lime's interpretable feature is binary, z_j = 1 when feature j stays in the applicant's quartile bin or category.
One coefficient per feature cannot follow a model whose response differs between the bins a feature can move to
(a tree that treats "low income" and "very high income" differently), and that caps the surrogate's fidelity on
real credit models near 0.5 at any kernel width (docs/method.md, "Per-bin LIME"). Here each feature gets **one
indicator per bin it can move to**, ``1[z_j = b]`` for every sampled value b other than the applicant's own; the
applicant is the all-zeros point, so the surrogate's intercept is its prediction at the applicant.

Everything else is the kernel-matched method's (:mod:`tasks.engine.matched`): lime's reference frequencies and
in-bin values, its exponential kernel drawn by kernel-matched sampling, the applicant's own values, the width grid,
held-out fidelity, the reasons' stability test and the ties. What the letter reads stays a weight per feature:

- a feature's **weight** is its *contrast*: how much the applicant's own value raises the explained class's
  probability compared with the values the kernel moves it to, the mean over the other bins b weighted by their
  reference shares π_b (the kernel scales every other bin alike, so these are lime's proportions):

      w_j = Σ_b π_b (h(β₀) − h(β₀ + β_{j,b}))

  with β₀ the intercept and h the identity when the surrogate fits the probability, or the logistic function when
  it fits the log-odds (``target``): the weight is in probability either way. It is what lime's binary weight
  estimates, so the direction, the ranking, ``share`` and the letter's sentence keep their meaning;
- ``local_pred`` = h(β₀), and the reported ``intercept`` = local_pred − Σ_j w_j, the baseline the weights are
  measured from (so ``local_pred = intercept + Σ weights`` holds as in lime's representation);
- ``fidelity`` is this surrogate's held-out R² (on the log-odds where it fits them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.engine.columns import PILOT_STREAM, ColumnBasis, ColumnLayout, column_layout, main_effects
from tasks.engine.explainer import _BYTES_PER_SAMPLE_FEATURE, _MODEL_BYTES_PER_ROW, _check_finite
from tasks.engine.explanations import Explanations
from tasks.engine.matched import KernelMatchedLime, kernel_tilt
from tasks.engine.sampler import Perturbations
from tasks.engine.stability import BLOCKS
from tasks.engine.surrogate import RidgeFit, WeightedMoments, uniform_moments
from tasks.inputs.config import MAX_COLUMNS, stream_samples

TARGETS = ("log-odds", "probability")
"""What the per-bin surrogate fits: the explained class's log-odds (default) or its probability."""

LOGIT_CLIP = 1e-6
"""Probabilities are clipped to [1e-6, 1 - 1e-6] before the log-odds, so a model that outputs exactly 0 or 1 gives
finite targets (|log-odds| <= 13.8)."""

SAMPLES_PER_COLUMN = 8
"""The floor of a width's screening samples per stream, per design column: held out, a surrogate fitted on fewer
overfits. The demo (51 columns), German credit (77) and the loan case (47) are above it at S/4."""

_BYTES_PER_SAMPLE_COLUMN = 20  # the design in float32, its float64 copy and its weighted copy in the moments step
_MOMENT_COPIES = 8  # [B, G, P, P] float64 moments: the groups, their unions, the jackknife's fits (measured)


def log_odds(y: torch.Tensor) -> torch.Tensor:
    """The log-odds of probabilities ``y``, clipped at :data:`LOGIT_CLIP`, in float64."""
    p = y.to(torch.float64).clamp(LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return torch.log(p) - torch.log1p(-p)


def _log_odds_moments(design: torch.Tensor, y: torch.Tensor, kernel_width: float) -> tuple[torch.Tensor, ...]:
    """The moments step of the per-bin method on the log-odds (kernel-matched samples: every weight is 1)."""
    return uniform_moments(design, log_odds(y))


def _probability_moments(design: torch.Tensor, y: torch.Tensor, kernel_width: float) -> tuple[torch.Tensor, ...]:
    """The moments step of the per-bin method on the probability."""
    return uniform_moments(design, y)


@dataclass
class PerBinLime(KernelMatchedLime):
    """The default engine (module docstring): the kernel-matched method with one indicator per bin a feature can
    move to, weights as contrasts in probability. A model with more than ``max_columns`` such indicators gets
    them for its most effective features only, decision by decision (:mod:`tasks.engine.columns`)."""

    target: str = "log-odds"
    max_columns: int = MAX_COLUMNS

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown per-bin target {self.target!r}; expected one of {TARGETS}")
        if self.max_columns < 1:
            raise ValueError(f"max_columns must be positive, got {self.max_columns}")
        self._layouts: tuple[ColumnLayout, dict[str, int]] | None = None
        super().__post_init__()

    def _build_kernels(self) -> None:
        super()._build_kernels()
        moments = _log_odds_moments if self.target == "log-odds" else _probability_moments
        self._moments = torch.compile(moments, dynamic=True) if self.compile else moments
        self._column_feature = self._sampler.row_features  # [P]: the feature of each indicator column
        self._column_frequency = self._sampler.row_frequencies  # [P]: lime's reference frequency of its value

    @property
    def num_columns(self) -> int:
        """P: one indicator column per (feature, sampled value); the applicant's own columns stay zero."""
        return int(self._sampler.row_features.numel())

    @property
    def wide(self) -> bool:
        """More indicators than ``max_columns``: each decision gets its own columns (:mod:`tasks.engine.columns`)."""
        return self.num_columns > self.max_columns

    @property
    def design_columns(self) -> int:
        """The columns of every decision's design: P, or max(max_columns, d) for a wide model."""
        return max(self.max_columns, self.stats.num_features) if self.wide else self.num_columns

    def screening_samples(self, s: int) -> int:
        """As the kernel-matched method's, but at least :data:`SAMPLES_PER_COLUMN` per design column (up to S/R):
        each stream's surrogate is scored on the other's samples, and with fewer samples than that its held-out
        fidelity measures its overfitting, not the model (a wide model's 384 columns on S/4 samples: median 0.26,
        against 0.58 on S; bench/bench_wide.py)."""
        screen = super().screening_samples(s)
        while screen < s and screen < SAMPLES_PER_COLUMN * self.design_columns:
            screen *= 2
        return screen

    def decisions_per_chunk(self, samples: int | None = None) -> int:
        """As the binary method's, with the per-bin design's columns and each decision's [G, P, P] moments."""
        columns = self.design_columns
        per_row = (self.stats.num_features * _BYTES_PER_SAMPLE_FEATURE + columns * _BYTES_PER_SAMPLE_COLUMN
                   + _MODEL_BYTES_PER_ROW)
        per_decision = (samples or self.num_samples) * per_row + (
            _MOMENT_COPIES * BLOCKS * self.stability_runs * columns * columns * 8)
        # half the budget: the other half holds the moments of the decisions in flight (decisions_in_flight)
        return max(1, self.budget_bytes() // 2 // per_decision)

    def _explain_stable(self, x: np.ndarray, ids: list[str]) -> Explanations:
        """A wide model's decisions first get their columns from a pilot (:meth:`_pilot_layouts`)."""
        if not self.wide:
            return super()._explain_stable(x, ids)
        self._layouts = (self._pilot_layouts(x, ids), {decision: i for i, decision in enumerate(ids)})
        try:
            return super()._explain_stable(x, ids)
        finally:
            self._layouts = None

    def _pilot_layouts(self, x: np.ndarray, ids: list[str]) -> ColumnLayout:
        """Each decision's columns from the main effects in a pilot of kernel-matched samples at lime's width
        (the screening round's size, a stream of its own: :mod:`tasks.engine.columns`)."""
        samples = self.screening_samples(stream_samples(self.num_samples, self.stability_runs)) * self.stability_runs
        tilt, parts = kernel_tilt(self.widths[0]), []

        def pilot(a: int, b: int) -> None:
            sub = list(ids[a:b])
            keys, own_rows, decisions = self._inputs(x[a:b], sub)
            tilts = torch.full((b - a,), tilt, dtype=torch.float64, device=self.device)
            drawn = self._sampler.sample(decisions, own_rows, keys, samples, PILOT_STREAM, tilt=tilts)
            target = self._predict(drawn.inputs.view((b - a) * samples, -1)).view(b - a, samples)
            _check_finite(target, sub, self.model.description)
            fitted = log_odds(target) if self.target == "log-odds" else target.to(torch.float64)
            effects = main_effects(self._value_indicators(drawn, own_rows), fitted, self._column_feature,
                                   self.stats.num_features)
            parts.append(column_layout(effects, self._column_feature, self.design_columns))

        self._in_chunks(len(x), samples, pilot)
        return ColumnLayout(*(torch.cat([getattr(p, name) for p in parts])
                              for name in ("column_of_row", "column_feature", "expanded")))

    def _layout_of(self, ids: list[str]) -> ColumnLayout:
        assert self._layouts is not None
        layout, position = self._layouts
        return layout.rows(torch.as_tensor([position[i] for i in ids], device=layout.column_of_row.device))

    def _value_indicators(self, perturbed: Perturbations, own_rows: torch.Tensor) -> torch.Tensor:
        """One indicator per table row (feature, sampled value), 1 where the sample moved the feature to that
        value; the applicant's own value has no indicator (float32 [B, n, P])."""
        rows = perturbed.rows
        moved = rows != own_rows.unsqueeze(1)
        design = torch.zeros((*rows.shape[:2], self.num_columns), dtype=torch.float32, device=rows.device)
        return design.scatter_(2, rows.clamp_min(0), moved.to(torch.float32))

    def _representation(self, perturbed: Perturbations, own_rows: torch.Tensor, ids: list[str]) -> torch.Tensor:
        """The per-bin design [B, n, columns]: :meth:`_value_indicators`, or for a wide model each decision's own
        columns, where a feature without its own per-value columns has one that is 1 wherever it moved."""
        if not self.wide:
            return self._value_indicators(perturbed, own_rows)
        rows = perturbed.rows.clamp_min(0)
        moved = (perturbed.rows != own_rows.unsqueeze(1)).to(torch.float32)
        columns = self._layout_of(ids).column_of_row.to(rows.device).gather(1, rows.flatten(1)).view_as(rows)
        design = torch.zeros((*rows.shape[:2], self.design_columns), dtype=torch.float32, device=rows.device)
        return design.scatter_(2, columns, moved)

    def _weight_basis(self, x: np.ndarray, ids: list[str]) -> ColumnBasis:
        """π [N, columns]: each other value's share among the values feature j can move to (lime's reference
        frequencies without the applicant's own, renormalised per feature); 0 on the applicant's own columns. A
        column that stands for all of a feature's other values has share 1."""
        own = torch.as_tensor(self._sampler.own_rows(self.stats.discretize(x)), device=self.device)
        n, columns = len(x), self.num_columns
        is_own = torch.zeros(n, columns + 1, dtype=torch.bool, device=self.device)
        is_own.scatter_(1, torch.where(own >= 0, own, columns), True)
        frequency = self._column_frequency.expand(n, -1).masked_fill(is_own[:, :columns], 0.0)
        if not self.wide:
            total = self._by_feature(frequency)
            return ColumnBasis(frequency / total[:, self._column_feature].clamp_min(1e-300))
        layout = self._layout_of(ids)
        local = torch.zeros(n, self.design_columns, dtype=frequency.dtype, device=self.device)
        local.scatter_add_(1, layout.column_of_row, frequency)
        total = self._by_feature(local, layout.column_feature)
        return ColumnBasis(local / total.gather(1, layout.column_feature).clamp_min(1e-300), layout.column_feature)

    def _feature_weights(self, fit: RidgeFit, basis: ColumnBasis | None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Contrasts [N, d] (module docstring), the prediction at the applicant and the contrasts' baseline [N]."""
        assert basis is not None
        at = fit.intercept
        if self.target == "log-odds":
            at = torch.sigmoid(fit.intercept)
            moved = torch.sigmoid(fit.intercept.unsqueeze(1) + fit.coef)
        else:
            moved = fit.intercept.unsqueeze(1) + fit.coef
        weights = self._by_feature(basis.share * (at.unsqueeze(1) - moved), basis.feature)
        return weights, at, at - weights.sum(1)

    def _left_counts(self, pooled: WeightedMoments, basis: ColumnBasis | None) -> torch.Tensor:
        """Samples that moved each feature to another value [N, d]: its indicators' sum."""
        feature = None if basis is None else basis.feature
        return self._by_feature(pooled.total_weight.unsqueeze(1) * pooled.mean_z, feature)

    def _by_feature(self, columns: torch.Tensor, feature: torch.Tensor | None = None) -> torch.Tensor:
        """Sum per-column values [N, columns] over each feature's columns: [N, d]; ``feature`` [N, columns]: a
        per-decision layout's column features (default: the table's rows)."""
        out = torch.zeros(columns.shape[0], self.stats.num_features, dtype=columns.dtype, device=columns.device)
        if feature is None:
            return out.index_add_(1, self._column_feature, columns)
        return out.scatter_add_(1, feature, columns)


__all__ = ["LOGIT_CLIP", "MAX_COLUMNS", "TARGETS", "PerBinLime", "log_odds"]
