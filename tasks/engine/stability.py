"""Stability of a decision's top-k set: moments per group of samples, their pooling, and the selection test.

A decision's samples come in *groups* (``BLOCKS`` contiguous blocks of every independent stream). Each group
keeps its weighted, centred moments (:class:`WeightedMoments` with a group axis); any union of groups is
combined exactly (Chan et al.'s parallel formula), so the pooled fit, each stream's own fit and every
leave-one-group-out fit follow from the same small tensors, without keeping the samples.

The test (docs/method.md, "Stability"): the top-k set is *selected with margin* ``M`` =
- forward selection: over the selection rounds ``t``, the least ``gain_t(chosen_t) - max_{f outside the set}
  gain_t(f)``, gains being the weighted-R² increases of lime's ``Ridge(alpha=0)`` rounds;
- highest weights: ``min_{f in set} |β_f| - max_{f outside} |β_f|`` of lime's ``Ridge(alpha=0.01)``.
``M ≥ 0`` on the pooled samples by construction. Its standard error is the delete-one-group jackknife's, and
the set counts as selected with confidence ``c`` when ``M / se ≥ t_{c, G-1}`` (Student's t, G groups).
"""

from __future__ import annotations

import functools
import itertools

import torch
from scipy.stats import t as student_t

from tasks.engine.surrogate import (
    _DEGENERATE,
    FINAL_ALPHA,
    HIGHEST_WEIGHTS_ALPHA,
    WeightedMoments,
    _solve_ridge,
)

BLOCKS = 8
"""Jackknife groups per stream: each stream's samples are split into this many contiguous blocks."""


def stack_groups(parts: list[WeightedMoments]) -> WeightedMoments:
    """Moments of ``[B]`` each -> moments with a group axis ``[B, G]``."""
    return WeightedMoments(*(torch.stack([getattr(p, f) for p in parts], dim=1) for f in _FIELDS))


_FIELDS = ("total_weight", "mean_z", "mean_y", "czz", "czy", "syy")


def index_groups(m: WeightedMoments, rows: torch.Tensor) -> WeightedMoments:
    """The moments of decisions ``rows`` (any leading-axis indexing)."""
    return WeightedMoments(*(getattr(m, f)[rows] for f in _FIELDS))


def to_device(m: WeightedMoments, device: torch.device) -> WeightedMoments:
    return WeightedMoments(*(getattr(m, f).to(device) for f in _FIELDS))


def concat_groups(parts: list[WeightedMoments], dim: int = 0) -> WeightedMoments:
    return WeightedMoments(*(torch.cat([getattr(p, f) for p in parts], dim=dim) for f in _FIELDS))


def combine(m: WeightedMoments, mask: torch.Tensor) -> WeightedMoments:
    """Moments of unions of groups: ``m`` is ``[B, G, ...]``, ``mask`` (0/1, float64 ``[H, G]``) selects the
    groups of each of H unions; returns ``[B, H, ...]``. Exact: the between-group scatter is added about a
    common centre (the all-groups mean), so nothing cancels catastrophically."""
    return combine_each(m, [mask])[0]


def combine_each(m: WeightedMoments, masks: list[torch.Tensor]) -> list[WeightedMoments]:
    """:func:`combine` for several masks at once: the groups' parts about the centre are computed once."""
    parts, centre_z, centre_y = _about_centre(m)
    out = []
    for mask in masks:
        mask = mask.to(dtype=torch.float64, device=m.czz.device)
        out.append(_united(tuple(_unite(mask, part) for part in parts), centre_z, centre_y))
    return out


def _about_centre(m: WeightedMoments) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """Each group's additive parts about the common centre (the all-groups mean): weight, weighted offsets of the
    means, and the scatter and cross-products including the between-group terms; and the centre."""
    w = m.total_weight  # [B, G]
    total = w.sum(1, keepdim=True)
    centre_z = (w.unsqueeze(-1) * m.mean_z).sum(1, keepdim=True) / total.unsqueeze(-1)  # [B, 1, d]
    centre_y = (w * m.mean_y).sum(1, keepdim=True) / total  # [B, 1]
    dz = m.mean_z - centre_z  # [B, G, d]
    dy = m.mean_y - centre_y  # [B, G]
    wdz = w.unsqueeze(-1) * dz
    scatter = m.czz + wdz.unsqueeze(-1) * dz.unsqueeze(-2)
    return (w, wdz, w * dy, scatter, m.czy + wdz * dy.unsqueeze(-1), m.syy + w * dy * dy), centre_z, centre_y


def _united(sums: tuple[torch.Tensor, ...], centre_z: torch.Tensor, centre_y: torch.Tensor) -> WeightedMoments:
    """The moments of unions from the sums of their groups' parts (:func:`_about_centre`)."""
    wh, offset_z, offset_y, scatter, cross, squares = sums
    mz = offset_z / wh.unsqueeze(-1)
    my = offset_y / wh
    czz = scatter - wh[..., None, None] * mz.unsqueeze(-1) * mz.unsqueeze(-2)
    czy = cross - wh.unsqueeze(-1) * mz * my.unsqueeze(-1)
    syy = squares - wh * my * my
    return WeightedMoments(wh, centre_z + mz, centre_y + my, czz, czy, syy)


def _unite(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ_g mask[h, g] · x[b, g, ...]`` -> ``[B, H, ...]``, summed group by group in a fixed order: every
    decision's numbers are then the same bits whatever the batch (a matrix product would pick its kernel, and
    so its rounding, by the batch's size)."""
    out = torch.zeros((x.shape[0], mask.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device)
    ones = (1,) * (x.dim() - 2)
    for g in range(mask.shape[1]):
        out += mask[:, g].view(1, -1, *ones) * x[:, g].unsqueeze(1)
    return out


def flatten(m: WeightedMoments) -> WeightedMoments:
    """``[B, H, ...]`` -> ``[B * H, ...]``."""
    return WeightedMoments(*(getattr(m, f).flatten(0, 1) for f in _FIELDS))


def pairwise_merge(old: WeightedMoments, new: WeightedMoments) -> WeightedMoments:
    """Group i of ``old`` united with group i of ``new`` (both ``[B, G, ...]``): the group count stays G."""
    both = WeightedMoments(*(torch.stack([getattr(old, f), getattr(new, f)], dim=2) for f in _FIELDS))
    batch, groups = old.total_weight.shape
    merged = combine(flatten(both), torch.ones(1, 2, dtype=torch.float64))  # [B*G, 1, ...]
    return WeightedMoments(*(getattr(merged, f).reshape(batch, groups, *getattr(merged, f).shape[2:]) for f in _FIELDS))


def selection_margin(m: WeightedMoments, chosen: torch.Tensor, method: str) -> torch.Tensor:
    """The margin M (module docstring) by which ``chosen`` (int64 [N, k], in selection order) is lime's top-k
    set under moments ``m`` ([N, ...]); +inf where no feature is left outside the set."""
    n, d = m.czy.shape
    rows = torch.arange(n, device=m.czy.device)
    in_set = torch.zeros(n, d, dtype=torch.bool, device=m.czy.device)
    in_set[rows.unsqueeze(1), chosen] = True
    if method == "highest_weights":
        size = _solve_ridge(m.czz, m.czy, HIGHEST_WEIGHTS_ALPHA).abs()
        inside = size.masked_fill(~in_set, float("inf")).amin(1)
        return inside - size.masked_fill(in_set, float("-inf")).amax(1)
    cov, cross = m.czz.clone(), m.czy.clone()
    tolerance = (_DEGENERATE * m.total_weight).unsqueeze(1)
    scale = m.syy.clamp_min(1e-300).unsqueeze(1)
    margin = torch.full((n,), float("inf"), dtype=torch.float64, device=m.czy.device)
    for step in range(chosen.shape[1]):
        pick = chosen[:, step]
        variance = cov.diagonal(dim1=1, dim2=2)
        usable = variance > tolerance
        gain = torch.where(usable, cross.square() / variance.clamp_min(1e-300), 0.0) / scale
        outside = gain.masked_fill(in_set, float("-inf")).amax(1)
        margin = torch.minimum(margin, gain[rows, pick] - outside)
        pivot_column = cov[rows, :, pick]
        factor = torch.where(usable[rows, pick], 1.0 / variance[rows, pick].clamp_min(1e-300), 0.0)
        cov -= factor.view(-1, 1, 1) * pivot_column.unsqueeze(2) * pivot_column.unsqueeze(1)
        cross -= factor.view(-1, 1) * pivot_column * cross[rows, pick].unsqueeze(1)
    return margin


def jackknife_z(groups: WeightedMoments, chosen: torch.Tensor, pooled_margin: torch.Tensor,
                method: str) -> torch.Tensor:
    """``M / se_jackknife(M)`` per decision; +inf where M > 0 and the spread is zero (or M is infinite)."""
    g = groups.total_weight.shape[1]
    margins = selection_margin(leave_one_group_out(groups), chosen.repeat_interleave(g, dim=0), method)
    return jackknife_ratio(margins.view(-1, g), pooled_margin)


def leave_one_group_out(groups: WeightedMoments) -> WeightedMoments:
    """The moments without each group in turn: ``[B, G, ...]`` -> ``[B * G, ...]``."""
    g = groups.total_weight.shape[1]
    parts, centre_z, centre_y = _about_centre(groups)
    everything = torch.ones(1, g, dtype=torch.float64, device=groups.czz.device)
    # all groups' sum less each group's own part: elementwise, so still the same bits whatever the batch, and
    # G times less work than summing the other G - 1 groups for each of the G unions
    return flatten(_united(tuple(_unite(everything, part) - part for part in parts), centre_z, centre_y))


def jackknife_ratio(margins: torch.Tensor, pooled_margin: torch.Tensor) -> torch.Tensor:
    """From the leave-one-group-out margins ``[B, G]``: ``M / se_jackknife(M)``; +inf where M > 0 and the spread
    is zero (or M is infinite), 0 where M <= 0 and degenerate."""
    g = margins.shape[1]
    finite = torch.isfinite(margins).all(1) & torch.isfinite(pooled_margin)
    margins = torch.where(finite.unsqueeze(1), margins, 0.0)
    spread = ((g - 1) / g * (margins - margins.mean(1, keepdim=True)).square().sum(1)).sqrt()
    z = pooled_margin / spread.clamp_min(1e-300)
    degenerate = ~finite | (spread <= 1e-300)  # nothing outside the set, or no spread at all
    positive = torch.where(pooled_margin > 0, float("inf"), 0.0).to(z.dtype)
    return torch.where(degenerate, positive, z)


def ranked_factors(coef: torch.Tensor, adverse: torch.Tensor, k: int, eligible: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors a decision's letter names, from its surrogate's coefficients on every feature ([N, d]):

    - ``adverse`` (the decision is in the explained class): the principal reasons are the up-to-k features
      with the largest *positive* coefficients (they raised the explained class's probability); the
      favourable factors, the up-to-k most negative ones;
    - otherwise: the k features with the largest |coefficient| (the main factors, either direction), and none
      favourable.

    Only ``eligible`` features ([N, d] bool; default all) are named: a feature whose effect the samples did not
    measure (it almost never left the applicant's bin) is no factor of the letter.

    Returns ``(reasons [N, k], favourable [N, k])``, feature indices ranked, -1 where fewer exist.
    """
    k = min(k, coef.shape[1])
    if eligible is None:
        eligible = torch.ones_like(coef, dtype=torch.bool)
    adverse = adverse.view(-1, 1)
    score = torch.where(eligible, torch.where(adverse, coef, coef.abs()), float("-inf"))
    top = torch.argsort(score, dim=1, descending=True, stable=True)[:, :k]
    chosen = score.gather(1, top)
    keep = torch.where(adverse, chosen > 0, chosen > float("-inf"))
    lowest = torch.argsort(torch.where(eligible, coef, float("inf")), dim=1, stable=True)[:, :k]
    shown = adverse & (coef.gather(1, lowest) < 0) & eligible.gather(1, lowest)
    return torch.where(keep, top, -1), torch.where(shown, lowest, -1)


def reason_margin(m: WeightedMoments, reasons: torch.Tensor, adverse: torch.Tensor, k: int,
                  eligible: torch.Tensor | None = None) -> torch.Tensor:
    """The margin by which ``reasons`` (int64 [N, k], -1 padded) is the decision's set of principal reasons
    under moments ``m`` ([N, ...]), with the surrogate on every feature (``Ridge(alpha=1)``):

    - adverse, k reasons: ``min(min_in β - max_out β, min_in β)`` (each reason outranks every other feature and
      raised the probability);
    - adverse, fewer than k: ``min(min_in β, -max_out β)`` (the reasons raised it, no other feature did);
    - otherwise: ``min_in |β| - max_out |β|``.
    over the ``eligible`` features (default all; :func:`ranked_factors`). +inf where nothing constrains it.
    ``M >= 0`` on the moments the set was chosen from.
    """
    return weights_margin(_solve_ridge(m.czz, m.czy, FINAL_ALPHA), reasons, adverse, k, eligible)


def weights_margin(coef: torch.Tensor, reasons: torch.Tensor, adverse: torch.Tensor, k: int,
                   eligible: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`reason_margin` from the features' weights ([N, d]) themselves: the binary surrogate's coefficients,
    or the per-bin surrogate's contrasts (:mod:`tasks.engine.perbin`)."""
    n, d = coef.shape
    in_set = torch.zeros(n, d + 1, dtype=torch.bool, device=coef.device)
    in_set.scatter_(1, torch.where(reasons >= 0, reasons, d), True)
    in_set = in_set[:, :d]
    if eligible is None:
        eligible = torch.ones_like(in_set)
    score = torch.where(adverse.view(-1, 1), coef, coef.abs())
    inside = score.masked_fill(~in_set, float("inf")).amin(1)
    outside = score.masked_fill(in_set | ~eligible, float("-inf")).amax(1)
    full = in_set.sum(1) >= eligible.sum(1).clamp_max(k)
    ranked = inside - outside
    adverse_margin = torch.where(full, torch.minimum(ranked, inside), torch.minimum(inside, -outside))
    return torch.where(adverse, adverse_margin, ranked)


@functools.cache
def critical_value(confidence: float, groups: int) -> float:
    """One-sided Student-t quantile with ``groups - 1`` degrees of freedom (the jackknife's)."""
    return float(student_t.ppf(confidence, max(groups - 1, 1)))


def replicate_agreement(ordered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From each stream's ordered top-k (int64 [B, R, k]): the share of stream pairs whose top-k SET agrees,
    and whether all streams give the same ORDERED top-k."""
    batch, runs, _ = ordered.shape
    ordered = ordered.to(torch.int64)
    sets = torch.zeros(batch, runs, int(ordered.max()) + 1 if ordered.numel() else 1, dtype=torch.bool,
                       device=ordered.device)
    sets.scatter_(2, ordered, True)
    pairs = list(itertools.combinations(range(runs), 2))
    same = torch.stack([(sets[:, a] == sets[:, b]).all(1) for a, b in pairs], dim=1)
    order = (ordered == ordered[:, :1]).all(2).all(1)
    return same.to(torch.float64).mean(1), order

