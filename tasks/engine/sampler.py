"""lime's tabular perturbations, batched over decisions on one torch device.

For every decision and feature, a sample draws a quartile bin (numeric) or a category from the reference
frequencies, independently per feature (lime does not centre on the decision), and puts into the model's
input a truncated-normal value inside the drawn bin (numeric) or the category's code. The interpretable
representation is binary: 1 where the sample's bin/category equals the decision's own. Row 0 of each
decision is the decision itself (all ones).

One uniform per (sample, feature) serves both draws: the bin is the inverse CDF of the frequencies at ``u``,
and ``(u - F(bin-1)) / p(bin)`` — uniform on [0, 1) given the bin — is the position inside the bin's
truncated normal, read from a precomputed inverse-CDF table. Everything is laid out [B, S, d], the model's
input layout, so no transposes are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.engine.rng import UNIFORM_BITS, uniform_bits
from tasks.engine.stats import GRID_INTERVALS, ReferenceStats


@dataclass
class Perturbations:
    """Samples of B decisions, S per decision."""

    inputs: torch.Tensor  # float32 [B, S, d]: what the model sees; [:, 0] is the decision itself
    same_bin: torch.Tensor  # bool [B, S, d]: binary representation (1 = the decision's own bin/category)


class QuartileSampler:
    """Draws lime's default (quartile-discretised) perturbations from fitted :class:`ReferenceStats`.

    Internally every (feature, sampled value) pair is a *row* of flat tables; a uniform's 24 random bits,
    offset by ``feature << 24``, are bucketed against all features' integer frequency edges in one
    ``bucketize`` call, which gives the row directly and compares exactly (no float rounding at the edges).
    """

    def __init__(self, stats: ReferenceStats, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.num_features = d = stats.num_features
        values, cumulative, inverse_cdf = stats.sampling_tables()
        counts = [len(f.values) for f in stats.features]
        self._row_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # first row per feature
        self._values = values
        scale = float(1 << UNIFORM_BITS)
        edges, lower, width, curves = [], [], [], []
        for j, count in enumerate(counts):
            cum = np.minimum(cumulative[j, :count], 1.0)
            low = np.concatenate([[0.0], cum[:-1]])
            # bits >= ceil(cum * 2**24)  <=>  bits / 2**24 >= cum: the edges between this feature's values
            edges.extend((j << UNIFORM_BITS) + np.ceil(cum[:-1] * scale).astype(np.int64))
            edges.append((j + 1) << UNIFORM_BITS)  # closes the feature: the next feature's rows start after it
            lower.extend(low * scale)
            width.extend((cum - low) * scale)
            curves.append(inverse_cdf[j, :count])
        self._edges = torch.as_tensor(np.asarray(edges, dtype=np.int64), device=self.device)
        self._lower = torch.as_tensor(np.asarray(lower), dtype=torch.float32, device=self.device)
        # position inside the bin on the inverse-CDF grid = (bits - lower) * G / width
        grid_per_bit = np.where(np.asarray(width) > 0, GRID_INTERVALS / np.maximum(width, 1e-300), 0.0)
        self._grid_per_bit = torch.as_tensor(grid_per_bit, dtype=torch.float32, device=self.device)
        table = np.concatenate(curves, axis=0)  # [rows, G + 1]
        pairs = np.stack([table[:, :-1], np.diff(table, axis=1)], axis=-1)  # value and slope per grid cell
        self._curve = torch.as_tensor(pairs.reshape(-1, 2), dtype=torch.float32, device=self.device)
        self._feature_shift = torch.arange(d, device=self.device) << UNIFORM_BITS

    def own_rows(self, own_bins: np.ndarray) -> np.ndarray:
        """Table row of each decision's own bin/code, -1 where the reference lacks it (never sampled)."""
        rows = np.full(own_bins.shape, -1, dtype=np.int64)
        for j in range(self.num_features):
            hit = self._values[j][None, :] == own_bins[:, j][:, None]
            rows[:, j] = np.where(hit.any(1), self._row_start[j] + hit.argmax(1), -1)
        return rows

    def sample(
        self, x: torch.Tensor, own_rows: torch.Tensor, keys: torch.Tensor, num_samples: int, stream: int = 0
    ) -> Perturbations:
        """Perturb decisions ``x`` (float32 [B, d]) whose own bins are table rows ``own_rows`` (int64 [B, d]).

        ``keys`` (int64 [B]) are the decisions' stream keys: the result for a decision depends only on its
        own row of ``x``, ``own_rows`` and ``keys``.
        """
        bits = uniform_bits(keys, num_samples, self.num_features, stream=stream)  # [B, S, d]
        # edges <= value = all edges of earlier features (one per row) + this feature's edges <= bits
        row = torch.bucketize(bits + self._feature_shift, self._edges, right=True)
        position = bits.to(torch.float32).sub_(self._lower.take(row)).mul_(self._grid_per_bit.take(row))
        cell = position.floor().clamp_(0, GRID_INTERVALS - 1)
        fraction = position.sub_(cell)
        flat = row * GRID_INTERVALS + cell.to(torch.int64)
        curve = self._curve.index_select(0, flat.view(-1)).view(*flat.shape, 2)
        inputs = torch.addcmul(curve[..., 0], fraction, curve[..., 1])
        inputs[:, 0] = x.to(torch.float32)

        same_bin = row == own_rows.unsqueeze(1)
        same_bin[:, 0] = True
        return Perturbations(inputs=inputs, same_bin=same_bin)


def lime_kernel(same_bin: torch.Tensor, kernel_width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and weights exactly as lime computes them in its default (discretised) path.

    The scaled data is the binary matrix, so the euclidean distance to row 0 (all ones) is
    ``sqrt(#features whose bin differs)``; the kernel is ``sqrt(exp(-d**2 / width**2))``. float64 [B, S].
    """
    d = same_bin.shape[-1]
    differing = d - same_bin.sum(-1, dtype=torch.float64)
    distance = differing.sqrt()
    weights = torch.sqrt(torch.exp(-(distance**2) / kernel_width**2))
    return distance, weights
