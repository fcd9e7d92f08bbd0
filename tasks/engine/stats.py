"""Statistics LIME draws its perturbations from, fitted once on the bank's reference population.

This mirrors ``lime.lime_tabular.LimeTabularExplainer.__init__`` with its defaults
(``discretize_continuous=True, discretizer='quartile'``) and ``lime.discretize.QuartileDiscretizer``:

- numeric feature: edges ``np.unique(np.percentile(col, [25, 50, 75]))``; bin ``searchsorted(edges, x)``
  (side left); per bin the reference mean, ``std + 1e-11`` (ddof 0), min ``[colmin] + edges`` and max
  ``edges + [colmax]``; bin names ``'x <= 1.00'``, ``'1.00 < x <= 2.00'``, ``'x > 3.00'``;
- categorical feature: its integer codes;
- every feature: the sorted values present in the (discretised) reference and their frequencies, which the
  sampler draws from; kernel width ``0.75 * sqrt(d)``.

On top of lime's statistics it precomputes, per (feature, bin), the inverse CDF of the truncated normal lime
samples inside the bin (``scipy.stats.truncnorm.ppf`` on a fine grid), so undiscretising on any device is a
table look-up with linear interpolation. Deliberate deviation: where a bin's min equals its max, lime 0.2.0.1
returns the z-score bound ``(min - mean) / std`` instead of a value; the table holds the bin's value there.

Missing values (lime has none: docs/method.md, "Missing values") are data here, not a code path: a feature whose
reference has nulls/NaN gets one more sampled value, its *missing slot* (code :attr:`FeatureStats.missing_value`),
with the reference's share of missing rows as its frequency and an inverse-CDF row of NaN, so a sample that draws
it passes NaN to the model. Quartile edges and bin statistics are computed over the present values only. A
decision's missing value discretises to the slot. A reference without gaps gives exactly lime's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import truncnorm

from tasks.errors import InputError
from tasks.inputs.config import MIN_REFERENCE_ROWS, FeatureConfig, default_kernel_width

GRID_INTERVALS = 4096
"""Intervals of the inverse-CDF grid per bin; the look-up's error is below 1/GRID_INTERVALS of probability."""


@dataclass(frozen=True)
class FeatureStats:
    """One feature's sampling statistics, as lime holds them."""

    name: str
    kind: str  # "numeric" or "categorical"
    edges: tuple[float, ...]  # quartile edges (numeric only)
    bin_names: tuple[str, ...]  # lime's bin names (numeric only)
    means: tuple[float, ...]
    stds: tuple[float, ...]
    mins: tuple[float, ...]
    maxs: tuple[float, ...]
    values: tuple[int, ...]  # sampled values: bin indices (numeric) or category codes present in the reference
    frequencies: tuple[float, ...]  # their relative frequencies in the reference
    categories: tuple[str, ...] = ()

    @property
    def missing_value(self) -> int:
        """The code of "missing": one past the last bin (numeric) or category (categorical)."""
        return len(self.categories) if self.kind == "categorical" else len(self.bin_names)

    @property
    def missing_frequency(self) -> float:
        """The reference's share of missing values that perturbations draw (0 where none are sampled)."""
        slot = self.values.index(self.missing_value) if self.missing_value in self.values else None
        return self.frequencies[slot] if slot is not None else 0.0

    def model_input(self, value: int) -> float:
        """What the model receives for a sampled value: the bin's reference mean, the category's code, or NaN for
        the missing slot (a missing value is one of the reference's values like any other)."""
        if value == self.missing_value:
            return float("nan")
        return self.means[value] if self.kind == "numeric" else float(value)

    def bin_of(self, value: float) -> int:
        """The discretised value of ``value``: its quartile bin (numeric) or its code (categorical); NaN is
        :attr:`missing_value`."""
        if np.isnan(value):
            return self.missing_value
        if self.kind == "categorical":
            return int(value)
        return int(np.searchsorted(np.asarray(self.edges), value))

    def condition(self, value: float) -> str:
        """lime's name for the decision's bin or category: ``'age <= 35.00'`` or ``'housing=rent'``;
        ``'age is missing'`` for a missing value."""
        if np.isnan(value):
            return f"{self.name} is missing"
        if self.kind == "categorical":
            code = int(value)
            label = self.categories[code] if 0 <= code < len(self.categories) else str(code)
            return f"{self.name}={label}"
        return self.bin_names[self.bin_of(value)]


@dataclass(frozen=True)
class ReferenceStats:
    """Everything the batched sampler needs, for all features, plus lime's kernel width."""

    features: tuple[FeatureStats, ...]
    kernel_width: float
    reference_rows: int
    data: np.ndarray | None = field(default=None, repr=False, compare=False)  # the reference itself

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def discretize(self, x: np.ndarray) -> np.ndarray:
        """Bins/codes of each decision, int64 [B, d]; a missing value (NaN) is its feature's missing slot."""
        x = np.atleast_2d(x)
        out = np.empty(x.shape, dtype=np.int64)
        for j, feature in enumerate(self.features):
            gaps = np.isnan(x[:, j])
            if feature.kind == "categorical":
                out[:, j] = np.where(gaps, 0.0, x[:, j]).astype(np.int64)
            else:
                out[:, j] = np.searchsorted(np.asarray(feature.edges), x[:, j])
            out[gaps, j] = feature.missing_value
        return out

    def missing_probe(self) -> tuple[np.ndarray, list[str]]:
        """Model rows that check NaN support: (rows float64 [m + 1, d], the names of the m features whose
        missing slot is sampled). Every row is a typical applicant (each feature's most frequent bin mean or
        category); row i has NaN in the i-th such feature, the last row in all of them (samples can miss several
        at once). No rows when no feature samples missing values."""
        gaps = [j for j, f in enumerate(self.features) if f.missing_frequency > 0]
        if not gaps:
            return np.zeros((0, self.num_features)), []
        base = np.empty(self.num_features)
        for j, feature in enumerate(self.features):
            present = [(freq, value) for value, freq in zip(feature.values, feature.frequencies, strict=True)
                       if value != feature.missing_value]
            typical = max(present)[1] if present else 0
            base[j] = feature.model_input(typical)
        rows = np.repeat(base[None, :], len(gaps) + 1, axis=0)
        for i, j in enumerate(gaps):
            rows[i, j] = np.nan
            rows[-1, j] = np.nan
        return rows, [self.features[j].name for j in gaps]

    def sampling_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded arrays for the sampler.

        Returns ``(values [d, K], cumulative [d, K], inverse_cdf [d, K, G + 1])``: the sampled values, the
        cumulative frequencies (padded with 2.0 so padding is never drawn), and per sampled value the
        inverse CDF of what is put in the model's input (a constant row for categories).
        """
        d = self.num_features
        width = max(len(f.values) for f in self.features)
        values = np.full((d, width), -1, dtype=np.int64)
        cumulative = np.full((d, width), 2.0, dtype=np.float64)
        inverse_cdf = np.zeros((d, width, GRID_INTERVALS + 1), dtype=np.float64)
        grid = np.linspace(0.0, 1.0, GRID_INTERVALS + 1)
        for j, feature in enumerate(self.features):
            k = len(feature.values)
            values[j, :k] = feature.values
            cum = np.cumsum(np.asarray(feature.frequencies, dtype=np.float64))
            cum /= cum[-1]
            cumulative[j, :k] = cum
            for slot, value in enumerate(feature.values):
                inverse_cdf[j, slot] = _inverse_cdf_row(feature, value, grid)
        return values, cumulative, inverse_cdf


def _inverse_cdf_row(feature: FeatureStats, value: int, grid: np.ndarray) -> np.ndarray:
    """What lime puts in the model's input for a sample that drew ``value``, as a function of a uniform (NaN for
    the missing slot)."""
    if value == feature.missing_value:
        return np.full(grid.shape, np.nan)
    if feature.kind == "categorical":
        return np.full(grid.shape, float(value))
    low, high = feature.mins[value], feature.maxs[value]
    mean, std = feature.means[value], feature.stds[value]
    a, b = (low - mean) / std, (high - mean) / std
    if a == b:  # lime returns the z-score `a` here (a bug); the bin holds one value: use it
        return np.full(grid.shape, float(low))
    row = truncnorm.ppf(grid, a, b, loc=mean, scale=std)
    row[0], row[-1] = low, high  # ppf(0), ppf(1) are the bounds; keep them exact
    return np.clip(row, low, high)


def _bin_names(name: str, edges: np.ndarray) -> tuple[str, ...]:
    names = ["%s <= %.2f" % (name, edges[0])]
    names += ["%.2f < %s <= %.2f" % (edges[i], name, edges[i + 1]) for i in range(len(edges) - 1)]
    names.append("%s > %.2f" % (name, edges[-1]))
    return tuple(names)


def _sampled(present: np.ndarray, counts: np.ndarray, rows: int, missing: int, missing_value: int
             ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Sampled values and their frequencies, counts over ``rows``; ``missing`` rows (0: none sampled) become the
    last value, the missing slot. ``rows`` counts every reference row where the slot is sampled, the present ones
    otherwise (exactly lime's frequencies for a complete column)."""
    values = [int(v) for v in present]
    frequencies = [float(c) / rows for c in counts]
    if missing:
        values.append(missing_value)
        frequencies.append(float(missing) / rows)
    return tuple(values), tuple(frequencies)


def _gaps(column: np.ndarray, sample_missing: bool) -> tuple[np.ndarray, int, int]:
    """The column's missing values (bool mask), how many the missing slot samples (0 if it samples none) and
    the rows the frequencies count over (every row where the slot is sampled, the present ones otherwise)."""
    gaps = np.isnan(column)
    missing = int(gaps.sum())
    return gaps, missing if sample_missing else 0, len(column) if sample_missing else len(column) - missing


def _numeric_stats(name: str, column: np.ndarray, sample_missing: bool = True) -> FeatureStats:
    gaps, missing, rows = _gaps(column, sample_missing)
    if gaps.any():
        column = column[~gaps]  # quartiles and bin statistics over the present values
    edges = np.unique(np.percentile(column, [25, 50, 75]))
    bins = np.searchsorted(edges, column)
    means, stds = [], []
    for b in range(len(edges) + 1):
        selection = column[bins == b]
        means.append(float(np.mean(selection)) if len(selection) else 0.0)
        stds.append((float(np.std(selection)) if len(selection) else 0.0) + 1e-11)
    present, counts = np.unique(bins, return_counts=True)
    values, frequencies = _sampled(present, counts, rows, missing, len(edges) + 1)
    return FeatureStats(
        name=name,
        kind="numeric",
        edges=tuple(float(e) for e in edges),
        bin_names=_bin_names(name, edges),
        means=tuple(means),
        stds=tuple(stds),
        mins=(float(column.min()), *(float(e) for e in edges)),
        maxs=(*(float(e) for e in edges), float(column.max())),
        values=values,
        frequencies=frequencies,
    )


def _categorical_stats(
    name: str, column: np.ndarray, categories: Sequence[str], sample_missing: bool = True
) -> FeatureStats:
    gaps, missing, rows = _gaps(column, sample_missing)
    present, counts = np.unique(column[~gaps].astype(np.int64), return_counts=True)
    values, frequencies = _sampled(present, counts, rows, missing, len(categories))
    return FeatureStats(
        name=name,
        kind="categorical",
        edges=(),
        bin_names=(),
        means=(),
        stds=(),
        mins=(),
        maxs=(),
        values=values,
        frequencies=frequencies,
        categories=tuple(categories),
    )



def fit_reference(
    reference: np.ndarray, features: Sequence[FeatureConfig], kernel_width: float | None = None
) -> ReferenceStats:
    """Fit lime's sampling statistics on the reference population (float64 [n, d], categoricals as codes, NaN
    for a missing value). A feature with ``missing = "fail"`` ignores the reference's gaps (its statistics are
    those of the present values, and no sample is missing it); any other feature samples them."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[1] != len(features):
        raise InputError(f"reference: expected {len(features)} feature columns, got shape {reference.shape}")
    if reference.shape[0] < MIN_REFERENCE_ROWS:
        raise InputError(
            f"reference: {reference.shape[0]} rows; at least {MIN_REFERENCE_ROWS} are needed for quartiles"
        )
    if np.isinf(reference).any():
        row, col = np.argwhere(np.isinf(reference))[0]
        raise InputError(f"reference: column {features[col].name!r} row {row} is not a finite number")
    empty = np.isnan(reference).all(axis=0)
    if empty.any():
        raise InputError(f"reference: column {features[int(np.argmax(empty))].name!r} has no value (all missing)")
    stats = []
    for j, feature in enumerate(features):
        column = reference[:, j]
        sample_missing = getattr(feature, "missing", "explain") != "fail"
        if feature.kind == "categorical":
            stats.append(_categorical_stats(feature.name, column, feature.categories or (), sample_missing))
        else:
            stats.append(_numeric_stats(feature.name, column, sample_missing))
    width = kernel_width if kernel_width is not None else default_kernel_width(len(features))
    return ReferenceStats(
        features=tuple(stats), kernel_width=width, reference_rows=reference.shape[0], data=reference
    )


def as_tensors(stats: ReferenceStats, device: torch.device) -> dict[str, torch.Tensor]:
    """The sampling tables on ``device``: values (int64), cumulative (float32), inverse_cdf (float32)."""
    values, cumulative, inverse_cdf = stats.sampling_tables()
    return {
        "values": torch.as_tensor(values, device=device),
        "cumulative": torch.as_tensor(cumulative, dtype=torch.float32, device=device),
        "inverse_cdf": torch.as_tensor(inverse_cdf, dtype=torch.float32, device=device),
    }
