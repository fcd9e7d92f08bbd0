"""Randomised quasi-Monte Carlo design: a digitally shifted Sobol sequence per decision and stream.

lime draws every perturbation independently. The same distribution can be sampled with far less noise: take
the (unscrambled) Sobol sequence in d dimensions, one dimension per feature, and XOR every point's 24-bit
coordinates with a random 24-bit *digital shift* per (decision, stream, feature). Each shifted point is still
exactly uniform on the 2**24 grid, so every sample has lime's distribution and every estimate keeps lime's
limit; but the points of one stream fill the unit cube evenly (a digitally shifted (t, s)-sequence), so the
moments the surrogate is fitted on carry much less sampling noise than independent draws
(docs/method.md, "Sampling design"). Independent shifts make independent streams.

The sequence's points come from ``torch.quasirandom.SobolEngine`` (Joe and Kuo's direction numbers, 30 bits,
exact in float64); the shifts from the counter-based generator (:mod:`tasks.engine.rng`), so a decision's
samples depend only on (seed, id, stream) and are the same integers on CPU and CUDA.

Row ``t`` of a stream (row 0 is the decision itself, never sampled) uses Sobol point ``t - 1``, so a stream
continued in later adaptation rounds extends the same sequence instead of starting a new one.
"""

from __future__ import annotations

import torch

from tasks.engine.rng import UNIFORM_BITS, stream_offsets, uniform_bits

MAX_FEATURES = torch.quasirandom.SobolEngine.MAXDIM
"""Sobol dimensions available (21,201): one per feature."""

SHIFT_STREAM_BASE = 1 << 22
"""Counter space of the shifts: stream ``r``'s shift uses the generator's stream ``SHIFT_STREAM_BASE + r``, whose
counters start at ``2**62``, far from every stream the independent design draws (streams below ``2**10``, so
counters below ``2**50``)."""


def sobol_rows(rows: int, num_features: int) -> torch.Tensor:
    """int64 [rows, d]: row 0 is zero (the decision's own row), row ``t`` is Sobol point ``t - 1`` in 24 bits."""
    engine = torch.quasirandom.SobolEngine(num_features, scramble=False)
    points = engine.draw(max(rows - 1, 0), dtype=torch.float64)  # k / 2**30: exact
    bits = torch.floor(points * float(1 << UNIFORM_BITS)).to(torch.int64)
    return torch.cat([torch.zeros(1, num_features, dtype=torch.int64), bits])[:rows]


def digital_shifts(keys: torch.Tensor, num_features: int, stream: int) -> torch.Tensor:
    """Each decision's 24-bit shift per feature for stream ``stream``: int64 [B, 1, d]."""
    offsets = stream_offsets(1, num_features, SHIFT_STREAM_BASE + stream, keys.device)
    return uniform_bits(keys, offsets, 1)


class SobolTable:
    """The sequence's rows on one device, grown (by doubling) as adaptation rounds reach further."""

    def __init__(self, num_features: int, device: torch.device) -> None:
        if num_features > MAX_FEATURES:
            raise ValueError(f"the Sobol design has {MAX_FEATURES:,} dimensions, one per feature; this model has "
                             f"{num_features:,} features: use [explain] design = \"random\"")
        self.num_features, self.device = num_features, device
        self._rows = torch.zeros(0, num_features, dtype=torch.int64, device=device)

    def rows(self, first: int, count: int) -> torch.Tensor:
        """Rows ``first .. first + count - 1`` of every stream's sequence: int64 [count, d]."""
        stop = first + count
        if stop > len(self._rows):
            size = max(stop, 2 * len(self._rows))
            self._rows = sobol_rows(size, self.num_features).to(self.device)
        return self._rows[first:stop]
