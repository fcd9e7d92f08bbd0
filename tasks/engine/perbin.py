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

from tasks.engine.explainer import _BYTES_PER_SAMPLE_FEATURE, _MODEL_BYTES_PER_ROW
from tasks.engine.matched import KernelMatchedLime
from tasks.engine.sampler import Perturbations
from tasks.engine.stability import BLOCKS
from tasks.engine.surrogate import RidgeFit, WeightedMoments, uniform_moments

TARGETS = ("log-odds", "probability")
"""What the per-bin surrogate fits: the explained class's log-odds (default) or its probability."""

LOGIT_CLIP = 1e-6
"""Probabilities are clipped to [1e-6, 1 - 1e-6] before the log-odds, so a model that outputs exactly 0 or 1 gives
finite targets (|log-odds| <= 13.8)."""

_BYTES_PER_SAMPLE_COLUMN = 20  # the design in float32, its float64 copy and its weighted copy in the moments step
_MOMENT_COPIES = 6  # [B, G, P, P] float64 moments: the groups, their unions and the jackknife's fits


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
    move to, weights as contrasts in probability."""

    target: str = "log-odds"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown per-bin target {self.target!r}; expected one of {TARGETS}")
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

    def decisions_per_chunk(self, samples: int | None = None) -> int:
        """As the binary method's, with the per-bin design's columns and each decision's [G, P, P] moments."""
        columns = self.num_columns
        per_row = (self.stats.num_features * _BYTES_PER_SAMPLE_FEATURE + columns * _BYTES_PER_SAMPLE_COLUMN
                   + _MODEL_BYTES_PER_ROW)
        per_decision = (samples or self.num_samples) * per_row + (
            _MOMENT_COPIES * BLOCKS * self.stability_runs * columns * columns * 8)
        return max(1, self.budget_bytes() // per_decision)

    def _representation(self, perturbed: Perturbations, own_rows: torch.Tensor) -> torch.Tensor:
        """One indicator per (feature, sampled value) column, 1 where the sample moved the feature to that value;
        the applicant's own value has no indicator (float32 [B, n, P])."""
        rows = perturbed.rows
        moved = rows != own_rows.unsqueeze(1)
        design = torch.zeros((*rows.shape[:2], self.num_columns), dtype=torch.float32, device=rows.device)
        return design.scatter_(2, rows.clamp_min(0), moved.to(torch.float32))

    def _weight_basis(self, x: np.ndarray) -> torch.Tensor:
        """π [N, P]: each other value's share among the values feature j can move to (lime's reference
        frequencies without the applicant's own, renormalised per feature); 0 on the applicant's own columns."""
        own = torch.as_tensor(self._sampler.own_rows(self.stats.discretize(x)), device=self.device)
        n, columns = len(x), self.num_columns
        is_own = torch.zeros(n, columns + 1, dtype=torch.bool, device=self.device)
        is_own.scatter_(1, torch.where(own >= 0, own, columns), True)
        frequency = self._column_frequency.expand(n, -1).masked_fill(is_own[:, :columns], 0.0)
        total = self._by_feature(frequency)
        return frequency / total[:, self._column_feature].clamp_min(1e-300)

    def _feature_weights(self, fit: RidgeFit, basis: torch.Tensor | None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Contrasts [N, d] (module docstring), the prediction at the applicant and the contrasts' baseline [N]."""
        assert basis is not None
        at = fit.intercept
        if self.target == "log-odds":
            at = torch.sigmoid(fit.intercept)
            moved = torch.sigmoid(fit.intercept.unsqueeze(1) + fit.coef)
        else:
            moved = fit.intercept.unsqueeze(1) + fit.coef
        weights = self._by_feature(basis * (at.unsqueeze(1) - moved))
        return weights, at, at - weights.sum(1)

    def _left_counts(self, pooled: WeightedMoments) -> torch.Tensor:
        """Samples that moved each feature to another value [N, d]: its indicators' sum."""
        return self._by_feature(pooled.total_weight.unsqueeze(1) * pooled.mean_z)

    def _by_feature(self, columns: torch.Tensor) -> torch.Tensor:
        """Sum per-column values [N, P] over each feature's columns: [N, d]."""
        out = torch.zeros(columns.shape[0], self.stats.num_features, dtype=columns.dtype, device=columns.device)
        return out.index_add_(1, self._column_feature, columns)


__all__ = ["LOGIT_CLIP", "TARGETS", "PerBinLime", "log_odds"]
