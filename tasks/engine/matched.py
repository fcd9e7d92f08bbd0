"""Kernel-matched LIME: lime's surrogate, fitted where it can reproduce the decision (docs/method.md).

The method (``[explain] method = "kernel-matched"``, the default) keeps lime's model class (a weighted ridge on
the binary "same bin as the applicant" representation), its interpretable features (quartile bins and
categories) and its exponential kernel. Four things change, each disclosed in the report's annex:

1. **Kernel-matched sampling.** Samples are drawn from the kernel-weighted distribution itself (every feature
   leaves the applicant's bin with lime's probability tilted by the kernel's factor per differing feature), so
   every sample weighs 1 and a narrow kernel keeps its full sample size (:meth:`QuartileSampler.tilted_tables`).
2. **The applicant's own values.** A feature that stays in the applicant's bin keeps the applicant's value, so
   the all-ones point of the surrogate *is* the applicant.
3. **A per-decision kernel width** from a pre-registered grid, widest (lime's 0.75·√d) first: the first width
   whose held-out fidelity reaches the target and whose effective sample size is above the floor. Its
   principal reasons then go through the stability test (with adaptation). No width passes: the widest is kept
   and the decision goes to review (its reasons are not adapted for stability).
4. **Reasons for the outcome.** The surrogate is fitted on every feature; for a decision in the explained
   (adverse) class the principal reasons are the up-to-k features that raised its probability most, and the
   favourable factors (the most negative) are kept apart (:func:`ranked_factors`).

Fidelity is held out: each stream's surrogate is scored on the other streams' samples (two-fold cross-fitting
with two streams), never on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tasks.engine.columns import ColumnBasis
from tasks.engine.explainer import HOST, BatchedLime
from tasks.engine.explanations import Collector, Explanations
from tasks.engine.stability import (
    BLOCKS,
    combine_each,
    critical_value,
    flatten,
    index_groups,
    jackknife_ratio,
    leave_one_group_out,
    ranked_factors,
    replicate_agreement,
    to_device,
    weights_margin,
)
from tasks.engine.surrogate import (
    FINAL_ALPHA,
    RidgeFit,
    WeightedMoments,
    all_features,
    held_out_r2,
    ridge_on,
    uniform_moments,
)
from tasks.inputs.config import MIN_STREAM_SAMPLES, WIDTH_GRID, stream_samples

MAX_REASONS = 4
"""Regulation B's commentary: disclosing more than four principal reasons is not likely to be helpful."""

SCREEN_FRACTION = 4
"""Each width is tried with S/4 samples; the chosen one is topped up to S (and adapted beyond)."""


def kernel_tilt(width: float) -> float:
    """lime's kernel ``sqrt(exp(-D² / width²))`` with D² = the number of differing features factorises into
    ``c ** D²`` with ``c = exp(-1 / (2 width²))``: the factor per differing feature."""
    return math.exp(-1.0 / (2.0 * width * width))


def _uniform_kernel(same_bin: torch.Tensor, y: torch.Tensor, kernel_width: float) -> tuple[torch.Tensor, ...]:
    """The engine's moments step for kernel-matched samples: the kernel is in the sampling, every weight is 1."""
    return uniform_moments(same_bin, y)


@dataclass
class KernelMatchedLime(BatchedLime):
    """The default engine (module docstring). ``stability_runs`` >= 2: the streams also serve the held-out
    fidelity."""

    width_grid: tuple[float, ...] = WIDTH_GRID
    target_fidelity: float = 0.5
    min_effective_share: float = 0.2  # effective samples at least this share of the samples drawn
    adverse_threshold: float = 0.5  # model_pred >= this: the decision is in the explained (adverse) class
    min_contrasts: int = 50  # samples that must leave the applicant's bin of a feature for it to be named

    def __post_init__(self) -> None:
        if self.stability_runs < 2:
            raise ValueError("the kernel-matched method needs stability_runs >= 2 (held-out fidelity)")
        if not self.width_grid or any(w <= 0 for w in self.width_grid):
            raise ValueError(f"width grid must hold positive widths, got {self.width_grid}")
        super().__post_init__()

    def _build_kernels(self) -> None:
        super()._build_kernels()
        self._moments = torch.compile(_uniform_kernel, dynamic=True) if self.compile else _uniform_kernel

    @property
    def widths(self) -> list[float]:
        """The grid's absolute widths."""
        root = math.sqrt(self.stats.num_features)
        return [scale * root for scale in self.width_grid]

    def _explain_stable(self, x: np.ndarray, ids: list[str]) -> Explanations:
        """:meth:`BatchedLime.explain` checks the batch and runs the deletion check; this walks the width grid."""
        out = _MatchedCollector(ids, self.top_k, self.stats.num_features, self.tie_slots)
        step = self.decisions_in_flight()
        for start in range(0, len(x), step):  # decisions are independent of their batch: groups change no bits
            self._explain_matched(x, ids, out, np.arange(start, min(start + step, len(x))))
        return out.explanations(self.with_all_weights)

    def decisions_in_flight(self) -> int:
        """Decisions walked through the width grid together: between rounds each keeps its groups' moments (old
        and new while they merge), and those must fit the memory budget too."""
        kept = 2 * BLOCKS * self.stability_runs * self.design_columns ** 2 * 8
        return max(self.decisions_per_chunk(), self.budget_bytes() // 2 // kept)

    @property
    def design_columns(self) -> int:
        """Columns of a decision's design: one per feature (lime's binary representation)."""
        return self.stats.num_features

    def _explain_matched(self, x: np.ndarray, ids: list[str], out: _MatchedCollector, pending: np.ndarray) -> None:
        """Walk the width grid, widest first, for decisions ``pending`` (rows of ``x``); each width is tried with R
        streams of S/(4R) kernel-matched samples (held-out fidelity and effective sample size); a decision takes
        the first width that passes, is topped up to S there and adapted while its reasons are not stable."""
        s, runs = stream_samples(self.num_samples, self.stability_runs), self.stability_runs
        screen = self.screening_samples(s)
        widest: list[tuple[np.ndarray, WeightedMoments]] = []  # first-round moments at the widest width
        exhausted = []  # decisions whose effective sample size falls below the floor from this width on
        for g, width in enumerate(self.widths):
            tilt, carried, undecided = kernel_tilt(width), [], []
            if g > 0 and len(pending):  # the floor needs no samples: narrower widths only lower it, so skip them
                reach = self._effective_samples(x[pending], tilt, screen * runs) >= (
                    self.min_effective_share * screen * runs)
                exhausted.append(pending[~reach])
                pending = pending[reach]
            if not len(pending):
                break

            def first(a: int, b: int, g=g, width=width, tilt=tilt, carried=carried, undecided=undecided,
                      pending=pending) -> None:
                rows = pending[a:b]
                # width g draws its own streams g R .. g R + R - 1
                groups, out.model_pred[rows] = self.first_round_groups(x[rows], [ids[i] for i in rows], screen,
                                                                       g * runs, tilt)
                fidelity = self._held_out(groups)[3].cpu().numpy()
                effective = self._effective_samples(x[rows], tilt, screen * runs)
                if g == 0:
                    out.fidelity_widest[rows] = fidelity
                passes = (fidelity >= self.target_fidelity) & (effective >= self.min_effective_share * screen * runs)
                if passes.any():
                    mask = torch.as_tensor(passes, device=groups.czz.device)
                    chosen = index_groups(groups, mask)
                    if screen < s:  # topped up to S before anything is recorded (_adapt_at)
                        again = np.ones(int(passes.sum()), bool)
                    else:
                        again = self._record(rows[passes], chosen, screen, x, width, tilt, out)
                    if again.any():
                        keep = torch.as_tensor(again, device=groups.czz.device)
                        carried.append((rows[passes][again], to_device(index_groups(chosen, keep), HOST)))
                if g == 0 and not passes.all():
                    mask = torch.as_tensor(~passes, device=groups.czz.device)
                    widest.append((rows[~passes], to_device(index_groups(groups, mask), HOST)))
                undecided.append(rows[~passes])

            self._in_chunks(len(pending), screen, first)
            self._adapt_at(x, ids, carried, screen, s, g, width, tilt, out)
            pending = np.concatenate(undecided) if undecided else pending[:0]
        pending = np.concatenate([pending, *exhausted])
        if len(pending):
            self._keep_widest(x, ids, pending, widest, screen, s, out)

    def _keep_widest(self, x: np.ndarray, ids: list[str], pending: np.ndarray,
                     widest: list[tuple[np.ndarray, WeightedMoments]], screen: int, s: int,
                     out: _MatchedCollector) -> None:
        """Decisions no width satisfied keep the widest width, topped up to S (they go to review: ``no-width``)."""
        width = self.widths[0]
        tilt, carried = kernel_tilt(width), []
        out.width_found[pending] = False
        for rows, groups in widest:
            keep = np.isin(rows, pending)
            if not keep.any():
                continue
            kept_rows, kept = rows[keep], index_groups(groups, torch.as_tensor(keep))

            def work(a: int, b: int, kept_rows=kept_rows, kept=kept) -> None:
                sub = to_device(index_groups(kept, slice(a, b)), self.device)
                if screen < s:  # topped up to S (recorded there); not adapted: review awaits them anyway
                    carried.append((kept_rows[a:b], to_device(sub, HOST)))
                else:
                    self._record(kept_rows[a:b], sub, screen, x, width, tilt, out)

            self._in_chunks(len(kept_rows), screen, work)
        self._adapt_at(x, ids, carried, screen, s, 0, width, tilt, out, adaptive=False)

    def _adapt_at(self, x: np.ndarray, ids: list[str], carried: list, screen: int, s: int, g: int, width: float,
                  tilt: float, out: _MatchedCollector, adaptive: bool = True) -> None:
        """Top the chosen width's screening samples up to S/R per stream, then adapt while the reasons are not
        stable (``adaptive``), up to ``max_samples_factor`` x S/R per stream. Decisions that keep the widest width
        for want of a passing one are topped up but not adapted: they go to review whatever their stability."""
        if not carried:
            return

        def evaluate(rows: np.ndarray, groups: WeightedMoments, per_stream: int) -> np.ndarray:
            unstable = self._record(rows, groups, per_stream, x, width, tilt, out)
            return unstable & self.adaptive & adaptive

        self._adapt(x, ids, carried, screen, evaluate, stream_base=g * self.stability_runs, tilt=tilt,
                    cap=s * self.max_samples_factor, minimum=s)

    def screening_samples(self, s: int) -> int:
        """Samples per stream with which each width of the grid is tried: S/R over ``SCREEN_FRACTION`` (at least
        the 64 the stability blocks need), a power-of-2 fraction, so that doubling reaches S/R exactly."""
        screen = s
        while screen % 2 == 0 and screen // 2 >= MIN_STREAM_SAMPLES and s // screen < SCREEN_FRACTION:
            screen //= 2
        return screen

    def _held_out(self, groups: WeightedMoments) -> tuple[WeightedMoments, RidgeFit, RidgeFit, torch.Tensor]:
        """The pooled moments, the surrogate on every feature fitted to them, each stream's own surrogate, and the
        held-out fidelity: each stream's surrogate scored on the other streams' samples, averaged."""
        runs, count = self.stability_runs, groups.total_weight.shape[1]
        own = torch.block_diag(*[torch.ones(1, count // runs, dtype=torch.float64)] * runs)
        pooled, streams, others = (flatten(m) for m in combine_each(
            groups, [torch.ones(1, count, dtype=torch.float64), own, 1.0 - own]))
        stream_fit = ridge_on(streams, all_features(streams), FINAL_ALPHA)
        fidelity = held_out_r2(stream_fit, others).view(-1, runs).mean(1)
        return pooled, ridge_on(pooled, all_features(pooled), FINAL_ALPHA), stream_fit, fidelity

    def _record(self, rows: np.ndarray, groups: WeightedMoments, per_stream: int, x: np.ndarray, width: float,
                tilt: float, out: _MatchedCollector) -> np.ndarray:
        """Fit and score decisions ``rows`` at this width, rank their factors, test the reasons' stability (stream
        agreement and the jackknife on their margin) and write them; return the ones whose reasons are not
        stable. At the sample cap (``final``), a decision whose only doubt is a tie between reasons k and k + 1 is
        settled by listing both (:meth:`_settle_ties`)."""
        runs, k = self.stability_runs, self.top_k
        count = groups.total_weight.shape[1]
        pooled, fit, stream_fit, fidelity = self._held_out(groups)
        adverse = torch.as_tensor(out.model_pred[rows] >= self.adverse_threshold, device=fit.coef.device)
        basis = self._weight_basis(x[rows], [out.ids[i] for i in rows])
        weights, local_pred, intercept = self._feature_weights(fit, basis)
        # a feature is a factor only where enough samples left the applicant's bin to measure its effect
        eligible = self._left_counts(pooled, basis) >= self.min_contrasts
        stream_weights = self._feature_weights(stream_fit, _repeat(basis, runs))[0]
        loo = leave_one_group_out(groups)
        loo_weights = self._feature_weights(ridge_on(loo, all_features(loo), FINAL_ALPHA), _repeat(basis, count))[0]
        test = _ReasonTest(weights, stream_weights, loo_weights, adverse, eligible, runs, count,
                           critical_value(self.confidence, count))
        reasons, favourable, share, same_order, z, stable = test.run(k)
        tied = torch.zeros_like(stable)
        cap = stream_samples(self.num_samples, runs) * self.max_samples_factor
        final = per_stream >= cap or not self.adaptive  # adaptation is over
        if final and self.tie_slots > k and not bool(stable.all()):
            reasons, share, same_order, z, stable, tied = self._settle_ties(test, reasons, share, same_order, z,
                                                                            stable)
        padding = torch.full((len(rows), self.tie_slots - reasons.shape[1]), -1, dtype=reasons.dtype,
                             device=reasons.device)
        shown = torch.cat([reasons, padding, favourable], dim=1)  # reason slots (k, or k + 1 tied), favourable
        out.feature_index[rows] = shown.cpu().numpy()
        out.weights[rows] = torch.where(shown >= 0, weights.gather(1, shown.clamp_min(0)), 0.0).cpu().numpy()
        out.intercept[rows] = intercept.cpu().numpy()
        out.local_pred[rows] = local_pred.cpu().numpy()
        out.fidelity[rows] = fidelity.cpu().numpy()
        out.all_weights[rows] = weights.cpu().numpy()
        out.stability[rows] = share.cpu().numpy()
        out.order_agrees[rows] = same_order.cpu().numpy()
        out.selection_z[rows] = z.cpu().numpy()
        out.stable[rows] = stable.cpu().numpy()
        out.tied[rows] = tied.cpu().numpy()
        out.num_samples[rows] = per_stream * runs
        out.kernel_width[rows] = width
        out.effective_samples[rows] = self._effective_samples(x[rows], tilt, per_stream * runs)
        return ~stable.cpu().numpy()

    @property
    def tie_slots(self) -> int:
        """Reasons a letter may name: k, or k + 1 where reasons k and k + 1 tie (Regulation B's commentary allows
        up to four principal reasons)."""
        return min(self.top_k + 1, MAX_REASONS, self.stats.num_features)

    @property
    def reason_slots(self) -> int:
        """The deletion check removes every principal factor named, the tied one included."""
        return self.tie_slots

    def _settle_ties(self, test: _ReasonTest, reasons: torch.Tensor, share: torch.Tensor, same_order: torch.Tensor,
                     z: torch.Tensor, stable: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """After full adaptation: a decision whose k reasons are not stable, but whose k + 1 are (the streams agree
        on the k + 1 and their margin passes the jackknife test), names k + 1, the last two weighing about the same:
        more samples could not separate them. The others keep their k and stay unstable (they go to review)."""
        k = self.top_k
        wider, _, wide_share, wide_order, wide_z, wide_stable = test.run(k + 1)
        full = (wider >= 0).all(1)  # k + 1 factors exist (for a decline: k + 1 raised it)
        settle = ~stable & wide_stable & full
        padded = torch.cat([reasons, torch.full_like(reasons[:, :1], -1)], dim=1)
        reasons = torch.where(settle.unsqueeze(1), wider, padded)
        share = torch.where(settle, wide_share, share)
        same_order = torch.where(settle, wide_order, same_order)
        z = torch.where(settle, wide_z, z)
        return reasons, share, same_order, z, stable | settle, settle

    # ------------------------------------------------------------------ the representation's hooks

    def _weight_basis(self, x: np.ndarray, ids: list[str]) -> ColumnBasis | None:
        """What turns a fit into feature weights, per decision (the per-bin method's bin shares); none here."""
        return None

    def _feature_weights(self, fit: RidgeFit, basis: ColumnBasis | None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each feature's weight [N, d], the surrogate's prediction at the applicant and its intercept [N]: lime's
        binary coefficients; the applicant is the all-ones point, so its prediction is b + Σβ."""
        return fit.coef, fit.intercept + fit.coef.sum(1), fit.intercept

    def _left_counts(self, pooled: WeightedMoments, basis: ColumnBasis | None) -> torch.Tensor:
        """Per decision and feature, how many samples left the applicant's bin [N, d]."""
        return pooled.total_weight.unsqueeze(1) * (1.0 - pooled.mean_z)

    def _effective_samples(self, x: np.ndarray, tilt: float, samples: int) -> np.ndarray:
        """Expected number of the ``samples`` that leave the applicant's point (differ in at least one feature):
        ``samples * (1 - Π_j (1 - p'_j))``. At tiny widths almost every sample *is* the applicant and the fit
        degenerates; this is the floor's measure."""
        own_rows = torch.as_tensor(self._sampler.own_rows(self.stats.discretize(x)), device=self.device)
        leave = self._sampler.leave_probability(own_rows, torch.full((len(x),), tilt, dtype=torch.float64,
                                                                     device=self.device))
        stay_all = (1.0 - leave).prod(1)
        return (samples * (1.0 - stay_all)).cpu().numpy()


class _MatchedCollector(Collector):
    """Per-decision results of the kernel-matched engine: the factors shown are k principal reasons (or main
    factors) then up to k favourable ones, -1 where fewer."""

    def __init__(self, ids: list[str], k: int, d: int, reason_slots: int) -> None:
        super().__init__(ids, k, d)
        n, k = len(ids), min(k, d)
        self.feature_index = np.full((n, reason_slots + k), -1, dtype=np.int64)
        self.weights = np.zeros((n, reason_slots + k))
        self.kernel_width, self.effective_samples, self.fidelity_widest = (np.zeros(n) for _ in range(3))
        self.width_found = np.ones(n, dtype=bool)
        self.tied = np.zeros(n, dtype=bool)

    def explanations(self, with_all_weights: bool) -> Explanations:
        explanations = super().explanations(with_all_weights)
        explanations.kernel_width = self.kernel_width
        explanations.effective_samples = self.effective_samples
        explanations.fidelity_widest = self.fidelity_widest
        explanations.width_found = self.width_found
        explanations.tied = self.tied
        return explanations


def _repeat(basis: ColumnBasis | None, times: int) -> ColumnBasis | None:
    """A per-decision basis for ``times`` fits per decision (streams, jackknife groups)."""
    return None if basis is None else basis.repeat_interleave(times, dim=0)


class _ReasonTest:
    """The stability test of a decision's reasons, for a number of reasons m (k, or k + 1 for a tie): the pooled
    fit's ranked factors, the streams' agreement on them, and the jackknife on their margin."""

    def __init__(self, weights: torch.Tensor, stream_weights: torch.Tensor, loo_weights: torch.Tensor,
                 adverse: torch.Tensor, eligible: torch.Tensor, runs: int, count: int, critical: float) -> None:
        self.weights, self.stream_weights, self.loo_weights = weights, stream_weights, loo_weights
        self.adverse, self.eligible = adverse, eligible
        self.runs, self.count, self.critical = runs, count, critical

    def run(self, m: int) -> tuple[torch.Tensor, ...]:
        """(reasons [N, m], favourable [N, m], stream agreement, same order, margin z, stable) for m reasons."""
        n, d = self.weights.shape
        runs, count = self.runs, self.count
        reasons, favourable = ranked_factors(self.weights, self.adverse, m, self.eligible)
        stream_reasons, _ = ranked_factors(self.stream_weights, self.adverse.repeat_interleave(runs), m,
                                           self.eligible.repeat_interleave(runs, dim=0))
        share, same_order = replicate_agreement(torch.where(stream_reasons >= 0, stream_reasons, d).view(n, runs, -1))
        margin = weights_margin(self.weights, reasons, self.adverse, m, self.eligible)
        margins = weights_margin(self.loo_weights, reasons.repeat_interleave(count, dim=0),
                                 self.adverse.repeat_interleave(count), m,
                                 self.eligible.repeat_interleave(count, dim=0))
        z = jackknife_ratio(margins.view(n, count), margin)
        stable = (share >= 1.0) & (z >= self.critical)
        return reasons, favourable, share, same_order, z, stable


__all__ = ["MAX_REASONS", "WIDTH_GRID", "KernelMatchedLime", "kernel_tilt"]
