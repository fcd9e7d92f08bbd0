"""lime's local surrogate, batched: feature selection and weighted ridge from sufficient statistics.

lime fits sklearn ``Ridge`` models per decision (``lime_base.py``). All of them are linear least squares with
an unpenalised intercept and sample weights ``w``, so they are determined by each decision's weighted,
centred moments of the binary data ``Z`` and the explained probability ``y``:

    Czz = Σ w (z - z̄)(z - z̄)ᵀ,  czy = Σ w (z - z̄)(y - ȳ),  syy = Σ w (y - ȳ)²   (z̄, ȳ weighted means)

- ``Ridge(alpha)`` on features F: ``β = (Czz[F, F] + alpha I)⁻¹ czy[F]``, intercept ``ȳ - z̄[F]·β``;
- its ``score`` (weighted R² on the same samples): ``1 - (syy - 2βᵀczy[F] + βᵀCzz[F, F]β) / syy``;
- forward selection (``Ridge(alpha=0)``, keep the candidate with the best score, ties to the lowest index):
  the R² gain of adding feature f to F is ``czy_f|F² / Czz_ff|F`` with the moments *swept* on F, so each
  round is a few [B, d, d] tensor operations. A candidate whose residual variance is numerically zero
  (constant or collinear with F) adds nothing to the R², exactly as sklearn's least-squares fallback;
- highest weights: ``Ridge(alpha=0.01)`` on all features, ranked by ``|β_j · z_j(row 0)| = |β_j|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORWARD_SELECTION_ALPHA = 0.0
HIGHEST_WEIGHTS_ALPHA = 0.01
FINAL_ALPHA = 1.0
_DEGENERATE = 1e-10  # residual variance below this share of the total weight counts as zero


@dataclass
class WeightedMoments:
    """Per-decision weighted, centred moments (float64)."""

    total_weight: torch.Tensor  # [B]
    mean_z: torch.Tensor  # [B, d]
    mean_y: torch.Tensor  # [B]
    czz: torch.Tensor  # [B, d, d]
    czy: torch.Tensor  # [B, d]
    syy: torch.Tensor  # [B]


def weighted_moments(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> WeightedMoments:
    """Moments of binary data ``z`` [B, S, d], targets ``y`` [B, S] and sample weights ``w`` [B, S]."""
    return WeightedMoments(*_moments(z, y, w))


def _moments(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Raw weighted sums, centred afterwards (``Σw zzᵀ - (Σw z)(Σw z)ᵀ / Σw``): exact enough in float64 for
    0/1 data, and one pass over the samples instead of three. A tuple, so ``torch.compile`` can fuse it."""
    y = y.to(torch.float64)
    w = w.to(torch.float64)
    z = z.to(torch.float64)
    zw = z * w.unsqueeze(-1)  # [B, S, d]
    total = w.sum(1)
    sum_z = zw.sum(1)
    mean_z = sum_z / total.unsqueeze(1)
    mean_y = (w * y).sum(1) / total
    yc = y - mean_y.unsqueeze(-1)
    czz = torch.bmm(zw.transpose(1, 2), z) - sum_z.unsqueeze(2) * mean_z.unsqueeze(1)
    czy = torch.bmm(zw.transpose(1, 2), yc.unsqueeze(-1)).squeeze(-1)  # Σ w z (y - ȳ) is already centred
    syy = (w * yc * yc).sum(1)
    return total, mean_z, mean_y, czz, czy, syy


def kernel_moments(same_bin: torch.Tensor, y: torch.Tensor, kernel_width: float) -> tuple[torch.Tensor, ...]:
    """lime's kernel weights of the samples and the weighted moments, in one (compilable) step.

    The scaled data is the binary matrix, so the euclidean distance to row 0 (all ones) is
    ``sqrt(#features whose bin differs)``; lime's kernel is ``sqrt(exp(-d**2 / width**2))``.
    """
    differing = same_bin.shape[-1] - same_bin.sum(-1, dtype=torch.float64)
    weights = torch.sqrt(torch.exp(-(differing.sqrt() ** 2) / kernel_width**2))
    return _moments(same_bin, y, weights)


def uniform_moments(same_bin: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The moments of kernel-matched samples: drawn from the kernel-weighted distribution, every sample weighs
    1 (docs/method.md, "Kernel-matched LIME"). A tuple, so ``torch.compile`` can fuse it.

    The data are 0/1 indicators, so ``Σ z zᵀ`` counts co-occurrences: a float32 product is exact for fewer than
    2**24 samples whatever its summation order (so the same bits in any batch), at half the float64 cost."""
    if same_bin.shape[1] >= 1 << 24:
        return _moments(same_bin, y, torch.ones(y.shape, dtype=torch.float64, device=y.device))
    y = y.to(torch.float64)
    z32 = same_bin.to(torch.float32)
    z = z32.to(torch.float64)
    total = torch.full(y.shape[:1], float(y.shape[1]), dtype=torch.float64, device=y.device)
    sum_z = z.sum(1)
    mean_z = sum_z / total.unsqueeze(1)
    mean_y = y.mean(1)
    yc = y - mean_y.unsqueeze(-1)
    czz = torch.bmm(z32.transpose(1, 2), z32).to(torch.float64) - sum_z.unsqueeze(2) * mean_z.unsqueeze(1)
    czy = torch.bmm(z.transpose(1, 2), yc.unsqueeze(-1)).squeeze(-1)
    syy = (yc * yc).sum(1)
    return total, mean_z, mean_y, czz, czy, syy


def forward_selection(m: WeightedMoments, k: int) -> torch.Tensor:
    """lime's ``forward_selection`` for every decision: int64 [B, min(k, d)], in order of selection."""
    batch, d = m.czy.shape
    cov = m.czz.clone()
    cross = m.czy.clone()
    tolerance = (_DEGENERATE * m.total_weight).unsqueeze(1)
    used = torch.zeros(batch, d, dtype=torch.bool, device=cov.device)
    rows = torch.arange(batch, device=cov.device)
    chosen = []
    for _ in range(min(k, d)):
        variance = cov.diagonal(dim1=1, dim2=2)
        usable = variance > tolerance
        gain = torch.where(usable, cross.square() / variance.clamp_min(1e-300), 0.0)
        gain = gain.masked_fill(used, float("-inf"))
        pick = gain.argmax(1)  # first maximum: lime keeps a candidate only if strictly better
        chosen.append(pick)
        used[rows, pick] = True
        pivot_column = cov[rows, :, pick]  # [B, d]
        pivot = variance[rows, pick]
        factor = torch.where(usable[rows, pick], 1.0 / pivot.clamp_min(1e-300), 0.0)
        cov -= factor.view(-1, 1, 1) * pivot_column.unsqueeze(2) * pivot_column.unsqueeze(1)
        cross -= factor.view(-1, 1) * pivot_column * cross[rows, pick].unsqueeze(1)
    return torch.stack(chosen, dim=1)


def _solve_ridge(czz: torch.Tensor, czy: torch.Tensor, alpha: float) -> torch.Tensor:
    eye = torch.eye(czz.shape[-1], dtype=czz.dtype, device=czz.device)
    lhs = czz + alpha * eye
    if alpha > 0:
        return torch.linalg.solve(lhs, czy.unsqueeze(-1)).squeeze(-1)
    return torch.linalg.lstsq(lhs, czy.unsqueeze(-1), driver="gelsd" if lhs.is_cpu else None).solution.squeeze(-1)


def highest_weights(m: WeightedMoments, k: int) -> torch.Tensor:
    """lime's ``highest_weights``: the k largest |coefficients| of Ridge(alpha=0.01) on all features."""
    coef = _solve_ridge(m.czz, m.czy, HIGHEST_WEIGHTS_ALPHA)
    order = torch.argsort(coef.abs(), dim=1, descending=True, stable=True)
    return order[:, : min(k, coef.shape[1])]


def select_features(m: WeightedMoments, k: int, method: str) -> torch.Tensor:
    """lime's feature selection; 'auto' is forward selection for k <= 6, highest weights otherwise."""
    if method == "auto":
        method = "forward_selection" if k <= 6 else "highest_weights"
    if method == "forward_selection":
        return forward_selection(m, k)
    if method == "highest_weights":
        return highest_weights(m, k)
    raise ValueError(f"unknown feature selection {method!r}")


@dataclass
class RidgeFit:
    """A weighted ridge on selected features, per decision."""

    features: torch.Tensor  # int64 [B, k]
    coef: torch.Tensor  # float64 [B, k]
    intercept: torch.Tensor  # [B]
    score: torch.Tensor  # weighted R² on the samples [B]


def ridge_on(m: WeightedMoments, features: torch.Tensor, alpha: float = FINAL_ALPHA) -> RidgeFit:
    """``Ridge(alpha, fit_intercept=True).fit(Z[:, F], y, sample_weight=w)`` and its ``score``, batched."""
    rows = torch.arange(features.shape[0], device=features.device).view(-1, 1, 1)
    czz = m.czz[rows, features.unsqueeze(2), features.unsqueeze(1)]  # [B, k, k]
    czy = m.czy.gather(1, features)
    coef = _solve_ridge(czz, czy, alpha)
    intercept = m.mean_y - (m.mean_z.gather(1, features) * coef).sum(1)
    residual = m.syy - 2 * (coef * czy).sum(1) + torch.einsum("bi,bij,bj->b", coef, czz, coef)
    return RidgeFit(features, coef, intercept, weighted_r2(residual, m.syy))


def all_features(m: WeightedMoments) -> torch.Tensor:
    """Every feature index, per decision: int64 [B, d] (a surrogate fitted on all features)."""
    batch, d = m.czy.shape
    return torch.arange(d, device=m.czy.device).expand(batch, -1)


def held_out_r2(fit: RidgeFit, other: WeightedMoments) -> torch.Tensor:
    """Weighted R² of surrogate ``fit`` on samples it was not fitted on, given their moments ``other``:

        Σ w (y - b - βᵀz)² = syy - 2βᵀczy + βᵀCzzβ + Σw (ȳ - b - βᵀz̄)²     (moments of ``other``, centred)
    """
    rows = torch.arange(fit.features.shape[0], device=fit.features.device).view(-1, 1, 1)
    czz = other.czz[rows, fit.features.unsqueeze(2), fit.features.unsqueeze(1)]
    czy = other.czy.gather(1, fit.features)
    offset = other.mean_y - fit.intercept - (other.mean_z.gather(1, fit.features) * fit.coef).sum(1)
    residual = (other.syy - 2 * (fit.coef * czy).sum(1) + torch.einsum("bi,bij,bj->b", fit.coef, czz, fit.coef)
                + other.total_weight * offset.square())
    return weighted_r2(residual, other.syy)


def weighted_r2(residual: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """sklearn's r2_score with sample weights; a constant target scores 1 if fitted exactly, else 0."""
    tiny = 1e-300
    constant = total <= tiny
    r2 = 1.0 - residual / total.clamp_min(tiny)
    return torch.where(constant, (residual <= tiny).to(r2.dtype), r2)
