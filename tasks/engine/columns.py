"""The per-bin design's columns for wide models: one indicator per value for the features that matter most to a
decision, one "moved" indicator for the rest (``[explain] max_columns``).

The per-bin surrogate's cost is quadratic in its columns P (the moments kept per jackknife group are P x P) and
cubic in its solves; P is about 4.3 d with quartile bins and a missing slot, so a bureau model with d = 300 inputs
would need 1,300 columns and some 200 MB of moments per decision. A decision's reasons come from a few features,
though, so the columns go where they buy fidelity:

1. a *pilot* of kernel-matched samples at lime's width (a stream of its own, so the explanation's samples are
   untouched) measures each feature's **main effect** on the fitted target: the between-value sum of squares of
   the target over the values the feature took, less its expectation under no effect ((values - 1) x the
   target's variance). Features are perturbed independently, so this is the feature's own effect, not a
   correlate's;
2. features are taken in that order and given one indicator per value while the columns fit the budget
   (C = max(max_columns, d)); the others keep one column, 1 where the sample moved the feature to any other
   value: lime's binary indicator, flipped. Its contrast weight is then its coefficient's effect itself (one
   value, share 1), so every feature still gets a weight in probability.

A model whose P fits the budget is explained exactly as before (no pilot): the layout changes nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PILOT_STREAM = 1000
"""The pilot's stream: beyond every width's streams (width g draws streams gR .. gR + R - 1)."""


@dataclass
class ColumnLayout:
    """Decisions' own design columns (N decisions, P table rows, C columns, d features)."""

    column_of_row: torch.Tensor  # int64 [N, P]: the column each table row's indicator goes to
    column_feature: torch.Tensor  # int64 [N, C]: each column's feature (padding columns: feature 0, never set)
    expanded: torch.Tensor  # bool [N, d]: features with one indicator per value

    def rows(self, index: torch.Tensor) -> ColumnLayout:
        """The layout of decisions ``index``."""
        return ColumnLayout(self.column_of_row[index], self.column_feature[index], self.expanded[index])


@dataclass
class ColumnBasis:
    """What turns a fit's coefficients into feature weights: each column's share π among the values its feature
    can move to [N, C], and, in a per-decision layout, each column's feature [N, C] (None: the table's rows)."""

    share: torch.Tensor
    feature: torch.Tensor | None = None

    def repeat_interleave(self, times: int, dim: int = 0) -> ColumnBasis:
        """The basis for ``times`` fits per decision (streams, jackknife groups)."""
        feature = None if self.feature is None else self.feature.repeat_interleave(times, dim=dim)
        return ColumnBasis(self.share.repeat_interleave(times, dim=dim), feature)


def main_effects(design: torch.Tensor, target: torch.Tensor, row_features: torch.Tensor, num_features: int,
                 ) -> torch.Tensor:
    """Each feature's main effect on ``target`` ([B, n]) in samples whose table-row indicators are ``design``
    ([B, n, P], 1 where the sample moved the feature to that row's value): the between-value sum of squares over
    the values taken (the applicant's own included), less (values taken - 1) x the target's variance, its
    expectation when the feature has no effect. float64 [B, d]."""
    y = target.to(torch.float64)
    n = y.shape[1]
    centred = y - y.mean(1, keepdim=True)
    z = design.to(torch.float64)
    sums = (z * centred.unsqueeze(2)).sum(1)  # [B, P]; elementwise, so a decision's bits do not depend on its batch
    counts = z.sum(1)  # [B, P]
    by_feature = torch.zeros(y.shape[0], num_features, dtype=torch.float64, device=y.device)
    between_moved = torch.where(counts > 0, sums.square() / counts.clamp_min(1.0), 0.0)
    between = by_feature.index_add(1, row_features, between_moved)
    own_count = n - by_feature.index_add(1, row_features, counts)
    own_sum = -by_feature.index_add(1, row_features, sums)  # the centred target sums to 0
    between = between + torch.where(own_count > 0, own_sum.square() / own_count.clamp_min(1.0), 0.0)
    taken = by_feature.index_add(1, row_features, (counts > 0).to(torch.float64)) + (own_count > 0)
    variance = centred.square().sum(1, keepdim=True) / max(n - 1, 1)
    return between - (taken - 1.0).clamp_min(0.0) * variance


def column_layout(effects: torch.Tensor, row_features: torch.Tensor, columns: int) -> ColumnLayout:
    """Each decision's columns (module docstring): features by decreasing main effect (``effects`` [N, d]; ties
    by feature order) get one indicator per value while d + the extra columns fit ``columns``; the rest one."""
    n, d = effects.shape
    device = effects.device
    values = torch.bincount(row_features, minlength=d).to(device)  # table rows per feature
    order = torch.argsort(-effects, dim=1, stable=True)
    extra = (values - 1).clamp_min(0)[order]  # [N, d]: the columns expanding each feature would add
    fits = extra.cumsum(1) <= max(columns - d, 0)
    expanded = torch.zeros(n, d, dtype=torch.bool, device=device).scatter_(1, order, fits)
    first_row = torch.cat([torch.ones(1, dtype=torch.bool, device=device), row_features[1:] != row_features[:-1]])
    opens = expanded[:, row_features] | first_row  # [N, P]: the row starts a column (rows of a feature are adjacent)
    column_of_row = opens.to(torch.int64).cumsum(1) - 1
    column_feature = torch.zeros(n, max(columns, d), dtype=torch.int64, device=device)
    column_feature.scatter_(1, column_of_row, row_features.expand(n, -1))
    return ColumnLayout(column_of_row, column_feature, expanded)


__all__ = ["PILOT_STREAM", "ColumnBasis", "ColumnLayout", "column_layout", "main_effects"]
