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

The uniforms come from a *design* (``[explain] design``): ``sobol`` (default), a digitally shifted Sobol
sequence per decision and stream (:mod:`tasks.engine.sobol`), or ``random``, independent draws as lime makes
them. Both give every sample lime's distribution; the Sobol design's estimates have less sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.engine.rng import UNIFORM_BITS, stream_offsets, uniform_bits
from tasks.engine.sobol import SobolTable, digital_shifts
from tasks.engine.stats import GRID_INTERVALS, ReferenceStats

DESIGNS = ("sobol", "random")
"""Where a sample's uniforms come from: a digitally shifted Sobol sequence per stream (:mod:`tasks.engine.sobol`),
or independent draws (lime's own design)."""


@dataclass
class Perturbations:
    """Samples of B decisions, S per decision."""

    inputs: torch.Tensor  # float32 [B, S, d]: what the model sees; [:, 0] is the decision itself
    same_bin: torch.Tensor  # bool [B, S, d]: binary representation (1 = the decision's own bin/category)
    rows: torch.Tensor  # int64 [B, S, d]: the table row (feature, sampled value) each sample drew; [:, 0] own


class QuartileSampler:
    """Draws lime's default (quartile-discretised) perturbations from fitted :class:`ReferenceStats`.

    Internally every (feature, sampled value) pair is a *row* of flat tables. A uniform's 24 random bits are
    compared, as integers, with the feature's frequency edges ``ceil(F * 2**24)`` (exact: no float rounding
    at the edges); the count of edges passed is the sampled value's slot. With ``compile=True`` the whole
    draw is one fused kernel (``torch.compile``); the result is the same to float32 rounding.
    """

    def __init__(
        self, stats: ReferenceStats, device: torch.device | str, compile: bool = False, design: str = "sobol"
    ) -> None:
        if design not in DESIGNS:
            raise ValueError(f"unknown sampling design {design!r}; expected one of {DESIGNS}")
        self.device = torch.device(device)
        self.design = design
        self.num_features = d = stats.num_features
        values, cumulative, inverse_cdf = stats.sampling_tables()
        counts = [len(f.values) for f in stats.features]
        self._row_start_host = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._values = values
        scale = float(1 << UNIFORM_BITS)
        edges = np.full((max(max(counts) - 1, 1), d), 1 << (UNIFORM_BITS + 1), dtype=np.int64)  # never reached
        lower, width, curves = [], [], []
        cum_padded = np.ones((max(counts), d))  # F(slot), 1 past the end
        for j, count in enumerate(counts):
            cum = np.minimum(cumulative[j, :count], 1.0)
            cum_padded[:count, j] = cum
            low = np.concatenate([[0.0], cum[:-1]])
            edges[: count - 1, j] = np.ceil(cum[:-1] * scale)  # bits >= ceil(F * 2**24)  <=>  u >= F
            lower.extend(low * scale)
            width.extend((cum - low) * scale)
            curves.append(inverse_cdf[j, :count])
        # position inside the bin on the inverse-CDF grid = (bits - lower) * G / width
        grid_per_bit = np.where(np.asarray(width) > 0, GRID_INTERVALS / np.maximum(width, 1e-300), 0.0)
        table = np.concatenate(curves, axis=0)  # [rows, G + 1]
        on = self.device
        self.tables = SamplingTables(
            edges=torch.as_tensor(edges, device=on),
            row_start=torch.as_tensor(self._row_start_host, device=on),
            lower=torch.as_tensor(np.asarray(lower), dtype=torch.float32, device=on),
            grid_per_bit=torch.as_tensor(grid_per_bit, dtype=torch.float32, device=on),
            curve_value=torch.as_tensor(table[:, :-1].reshape(-1), dtype=torch.float32, device=on),
            curve_slope=torch.as_tensor(np.diff(table, axis=1).reshape(-1), dtype=torch.float32, device=on),
        )
        self._cumulative = torch.as_tensor(cum_padded, dtype=torch.float64, device=on)
        self._row_feature = torch.as_tensor(np.repeat(np.arange(d), counts), device=on)
        self._row_slot = torch.as_tensor(np.concatenate([np.arange(c) for c in counts]), device=on)
        self._offsets: dict[tuple[int, int], torch.Tensor] = {}
        self._sobol = SobolTable(d, self.device) if design == "sobol" else None
        draw = draw_random if design == "random" else draw_sobol
        self._draw = torch.compile(draw, dynamic=True) if compile else draw

    @property
    def row_features(self) -> torch.Tensor:
        """The feature of every table row (int64 [rows]): a row is one (feature, sampled value) pair."""
        return self._row_feature

    @property
    def row_frequencies(self) -> torch.Tensor:
        """lime's reference frequency of every table row's value (float64 [rows])."""
        previous = torch.cat([torch.zeros_like(self._cumulative[:1]), self._cumulative[:-1]])
        return (self._cumulative - previous)[self._row_slot, self._row_feature]

    def own_rows(self, own_bins: np.ndarray) -> np.ndarray:
        """Table row of each decision's own bin/code, -1 where the reference lacks it (never sampled)."""
        rows = np.full(own_bins.shape, -1, dtype=np.int64)
        for j in range(self.num_features):
            hit = self._values[j][None, :] == own_bins[:, j][:, None]
            rows[:, j] = np.where(hit.any(1), self._row_start_host[j] + hit.argmax(1), -1)
        return rows

    def sample(
        self,
        x: torch.Tensor,
        own_rows: torch.Tensor,
        keys: torch.Tensor,
        num_samples: int,
        stream: int = 0,
        adaptation_round: int = 0,
        first_row: int = 0,
        tilt: torch.Tensor | None = None,
    ) -> Perturbations:
        """Perturb decisions ``x`` (float32 [B, d]) whose own bins are table rows ``own_rows`` (int64 [B, d]).

        ``keys`` (int64 [B]) are the decisions' stream keys: the result for a decision depends only on its
        own row of ``x``, ``own_rows`` and ``keys``. Row ``i`` of the result is row ``first_row + i`` of the
        decision's stream ``stream``; row 0 of the result is the decision itself. The Sobol design continues
        the stream's sequence there; the random design draws each ``adaptation_round`` from a stream of its own
        (``stream + 64 * adaptation_round``), as the engine always has.

        ``tilt`` (float64 [B], in (0, 1]) switches to *kernel-matched* sampling (docs/method.md, "Kernel-matched
        LIME"): each feature leaves the decision's bin with lime's probability tilted by the kernel's factor
        ``c = exp(-1 / (2 width**2))`` per differing feature, and a feature that stays in its bin keeps the
        decision's own value. ``None``: lime's sampling, unchanged.
        """
        x = x.to(torch.float32)
        tilted = None if tilt is None else self.tilted_tables(own_rows, tilt)
        if self._sobol is not None:
            rows = self._sobol.rows(first_row, num_samples)
            shifts = digital_shifts(keys, self.num_features, stream)
            inputs, same_bin, drawn = self._draw(rows, shifts, x, own_rows, self.tables, tilted)
            return Perturbations(inputs=inputs, same_bin=same_bin, rows=drawn)
        stream += ROUND_STRIDE * adaptation_round
        offsets = self._offsets.get((num_samples, stream))
        if offsets is None:
            offsets = stream_offsets(num_samples, self.num_features, stream, self.device)
            self._offsets[(num_samples, stream)] = offsets
        inputs, same_bin, drawn = self._draw(keys, offsets, x, own_rows, self.tables, num_samples, tilted)
        return Perturbations(inputs=inputs, same_bin=same_bin, rows=drawn)

    def own_width(self, own_rows: torch.Tensor) -> torch.Tensor:
        """How wide each decision's own bin is on the frequency scale, in bits (float64 [B, d]), read from the
        draw's own integer edges so that the two agree exactly; an own value the reference lacks has width 0
        (every sample leaves it)."""
        known = own_rows >= 0
        slot = (own_rows - self.tables.row_start).clamp_min(0)
        top = 1 << UNIFORM_BITS
        d = self.num_features
        bounds = torch.cat([torch.zeros(1, d, dtype=torch.int64, device=self.device),
                            self.tables.edges.clamp_max(top),
                            torch.full((1, d), top, dtype=torch.int64, device=self.device)])
        width = (bounds.gather(0, slot + 1) - bounds.gather(0, slot)).to(torch.float64)
        return torch.where(known, width, 0.0)

    def leave_probability(self, own_rows: torch.Tensor, tilt: torch.Tensor) -> torch.Tensor:
        """Per decision and feature, the probability that a kernel-matched sample leaves the decision's bin:
        ``p c / (p c + 1 - p)`` with lime's ``p = 1 - frequency of the own bin`` (float64 [B, d])."""
        stay = self.own_width(own_rows) / float(1 << UNIFORM_BITS)
        leave = (1.0 - stay) * tilt.view(-1, 1)
        return leave / (leave + stay)

    def tilted_tables(self, own_rows: torch.Tensor, tilt: torch.Tensor) -> TiltedTables:
        """Each decision's own frequency tables for kernel-matched sampling: the decision's own bin keeps its mass
        ``f`` and every other bin is scaled by the kernel's factor ``c``, renormalised by ``n = f + (1 - f) c``:

            F'(k) = (c F(k) + (1 - c) f [k >= own]) / n

        The unchanged inverse-CDF draw on these tables gives the kernel-weighted distribution exactly (to the
        2**-24 resolution of the uniforms), and the in-bin position of every other bin is lime's. A decision whose
        own value the reference lacks (f = 0) keeps lime's tables. Monotone in u, so the Sobol strata stay strata.
        """
        batch, d = own_rows.shape
        cumulative = self._cumulative  # [K, d]
        slots = cumulative.shape[0]
        known = own_rows >= 0
        own_slot = (own_rows - self.tables.row_start).clamp_min(0)
        previous = torch.cat([torch.zeros(1, d, dtype=torch.float64, device=self.device), cumulative[:-1]])
        frequency = cumulative - previous  # [K, d]
        own_mass = torch.where(known, frequency.gather(0, own_slot), 0.0).unsqueeze(1)  # [B, 1, d]
        c = tilt.to(torch.float64).view(-1, 1, 1)
        at_or_after = (torch.arange(slots, device=self.device).view(1, -1, 1) >= own_slot.unsqueeze(1)) & \
            known.unsqueeze(1)
        tilted = ((c * cumulative.unsqueeze(0) + (1.0 - c) * own_mass * at_or_after) / (c + (1.0 - c) * own_mass))
        tilted = tilted.clamp_(0.0, 1.0)  # [B, K, d]
        scale = float(1 << UNIFORM_BITS)
        base = self.tables.edges  # [max(K - 1, 1), d]; padding past each feature's last slot
        padding = base >= (1 << (UNIFORM_BITS + 1))
        if slots > 1:
            edges = torch.where(padding, base, torch.ceil(tilted[:, : slots - 1] * scale).to(torch.int64))
        else:
            edges = base.expand(batch, -1, -1)
        low = torch.cat([torch.zeros(batch, 1, d, dtype=torch.float64, device=self.device), tilted[:, :-1]], dim=1)
        lower = (low * scale)[:, self._row_slot, self._row_feature]  # [B, rows]
        width = ((tilted - low) * scale)[:, self._row_slot, self._row_feature]
        grid_per_bit = torch.where(width > 0, GRID_INTERVALS / width.clamp_min(1e-300), 0.0)
        return TiltedTables(edges=edges, lower=lower.to(torch.float32), grid_per_bit=grid_per_bit.to(torch.float32))

ROUND_STRIDE = 64
"""Random design: adaptation round a of stream r draws the generator's stream ``r + 64 a``; (0, 0) is the plain
engine's."""


@dataclass(frozen=True)
class TiltedTables:
    """Kernel-matched sampling: each decision's own frequency tables (:meth:`QuartileSampler.tilted_tables`)."""

    edges: torch.Tensor  # int64 [B, K - 1, d]: integer frequency edges per decision and feature
    lower: torch.Tensor  # float32 [B, rows]: each row's lower frequency edge, in bits
    grid_per_bit: torch.Tensor  # float32 [B, rows]: inverse-CDF grid cells per bit inside the row


@dataclass(frozen=True)
class SamplingTables:
    """Flat per-row tables on the device (row = a feature's sampled bin or category)."""

    edges: torch.Tensor  # int64 [K - 1, d]: integer frequency edges per feature (padding never reached)
    row_start: torch.Tensor  # int64 [d]: first row of each feature
    lower: torch.Tensor  # float32 [rows]: the row's lower frequency edge, in bits
    grid_per_bit: torch.Tensor  # float32 [rows]: inverse-CDF grid cells per bit inside the row
    curve_value: torch.Tensor  # float32 [rows * G]: inverse CDF at the grid points
    curve_slope: torch.Tensor  # float32 [rows * G]: its increase to the next grid point


def draw_random(
    keys: torch.Tensor,
    offsets: torch.Tensor,
    x: torch.Tensor,
    own_rows: torch.Tensor,
    tables: SamplingTables,
    num_samples: int,
    tilted: TiltedTables | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perturbations from independent uniforms (the counter-based generator)."""
    return draw_perturbations(uniform_bits(keys, offsets, num_samples), x, own_rows, tables, tilted)


def draw_sobol(
    rows: torch.Tensor, shifts: torch.Tensor, x: torch.Tensor, own_rows: torch.Tensor, tables: SamplingTables,
    tilted: TiltedTables | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perturbations from Sobol rows (int64 [S, d]) shifted per decision (int64 [B, 1, d])."""
    return draw_perturbations(torch.bitwise_xor(rows.unsqueeze(0), shifts), x, own_rows, tables, tilted)


def draw_perturbations(
    bits: torch.Tensor, x: torch.Tensor, own_rows: torch.Tensor, tables: SamplingTables,
    tilted: TiltedTables | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From 24-bit uniforms (int64 [B, S, d]): the model's inputs (float32 [B, S, d]), the binary
    representation (bool [B, S, d]) and the table row each sample drew (int64 [B, S, d]; row 0: the decision's
    own rows, -1 where the reference lacks its value). With ``tilted`` (each decision's kernel-tilted tables) the
    draw is kernel-matched and a feature that stays in the decision's bin keeps the decision's own value (lime
    redraws a value inside the bin)."""
    if tilted is None:
        slot = (bits >= tables.edges[0]).to(torch.int64)
        for k in range(1, tables.edges.shape[0]):
            slot += bits >= tables.edges[k]
        row = slot.add_(tables.row_start)
        position = bits.to(torch.float32).sub_(tables.lower[row]).mul_(tables.grid_per_bit[row])
    else:
        slot = (bits >= tilted.edges[:, :1]).to(torch.int64)
        for k in range(1, tilted.edges.shape[1]):
            slot += bits >= tilted.edges[:, k : k + 1]
        row = slot.add_(tables.row_start)
        flat = row.view(row.shape[0], -1)
        lower = tilted.lower.gather(1, flat).view_as(row)
        position = bits.to(torch.float32).sub_(lower).mul_(tilted.grid_per_bit.gather(1, flat).view_as(row))
    cell = position.floor().clamp_(0, GRID_INTERVALS - 1)
    fraction = position.sub_(cell)
    flat = cell.to(torch.int64).add_(row * GRID_INTERVALS)
    inputs = tables.curve_value[flat].addcmul_(fraction, tables.curve_slope[flat])
    inputs[:, 0] = x
    same_bin = row == own_rows.unsqueeze(1)
    same_bin[:, 0] = True
    if tilted is not None:
        inputs = torch.where(same_bin, x.unsqueeze(1), inputs)
    row[:, 0] = own_rows
    return inputs, same_bin, row
