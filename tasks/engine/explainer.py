"""The batched LIME explainer: sampler -> model -> kernel -> surrogate, for many decisions per pass.

Structure after Captum's explainers: the sampler, the kernel and the surrogate are separate pieces, and
the device is the model's. Decisions are processed in chunks sized to a memory budget; each chunk is one
model call over all its perturbations. On CUDA out-of-memory the chunk is halved and retried (logged), so
no decision is lost.

The result type is :class:`~tasks.engine.explanations.Explanations`; the kernel-matched engine
(:mod:`tasks.engine.matched`) builds on :class:`BatchedLime`, and :mod:`tasks.engine.factory` picks the
configured engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tasks.engine.deletion import MAX_COMBINATIONS, DeletionCheck
from tasks.engine.explanations import Collector, Explanations
from tasks.engine.rng import decision_keys
from tasks.engine.sampler import Perturbations, QuartileSampler
from tasks.engine.stability import (
    BLOCKS,
    combine,
    concat_groups,
    critical_value,
    flatten,
    index_groups,
    jackknife_z,
    pairwise_merge,
    replicate_agreement,
    selection_margin,
    stack_groups,
    to_device,
)
from tasks.engine.stats import ReferenceStats
from tasks.engine.surrogate import (
    FINAL_ALPHA,
    WeightedMoments,
    all_features,
    kernel_moments,
    ridge_on,
    select_features,
)
from tasks.errors import ModelError
from tasks.inputs.config import stream_samples
from tasks.inputs.model import LoadedModel

log = logging.getLogger("limelight.engine")

_BYTES_PER_SAMPLE_FEATURE = 96  # sampler and surrogate temporaries per (sample, feature): an upper bound
_MODEL_BYTES_PER_ROW = 2048  # activations of a small tabular model per input row (a conservative default)
_CPU_BUDGET_MB = 1024
_CPU_MODEL_ROWS = 8192  # a small MLP runs ~2x faster per row in calls that keep activations in cache


@dataclass
class BatchedLime:
    """lime's ``explain_instance`` (tabular, default discretised path) for a batch of decisions at once."""

    stats: ReferenceStats
    model: LoadedModel
    explain_index: int
    num_samples: int = 5000
    top_k: int = 3
    seed: int = 0
    feature_selection: str = "auto"
    memory_budget_mb: int | None = None  # default: 1 GiB on CPU, a quarter of the free memory on CUDA
    with_all_weights: bool = True
    model_rows: int | None = None  # rows per model call; default: cache-sized on CPU, the whole chunk on CUDA
    compile: bool = False  # fuse sampling and the kernel/moments step with torch.compile (factory.compile_enabled)
    stability_runs: int = 1  # independent streams of S/R samples per decision; 1: the plain engine (no stability)
    adaptive: bool = False  # double the samples of unstable decisions, up to max_samples_factor x num_samples
    max_samples_factor: int = 16
    confidence: float = 0.95  # of the selection test (docs/method.md, "Stability")
    deletion_check: bool = True
    design: str = "sobol"  # where the uniforms come from: "sobol" (shifted Sobol sequence) or "random" (lime's)
    _sampler: QuartileSampler = field(init=False, repr=False)
    _chunk: int = field(init=False, repr=False)
    _budget: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = self.model.device
        self._build_kernels()
        self._budget = self._measured_budget()
        self._chunk = self.decisions_per_chunk()

    def _build_kernels(self) -> None:
        self._sampler = QuartileSampler(self.stats, self.device, compile=self.compile, design=self.design)
        self._moments = torch.compile(kernel_moments, dynamic=True) if self.compile else kernel_moments

    def decisions_per_chunk(self, samples: int | None = None) -> int:
        """How many decisions fit the memory budget in one pass of ``samples`` rows each (default S)."""
        per_row = self.stats.num_features * _BYTES_PER_SAMPLE_FEATURE + _MODEL_BYTES_PER_ROW
        rows = self.budget_bytes() // per_row
        return max(1, rows // (samples or self.num_samples))

    def budget_bytes(self) -> int:
        """The memory budget, taken once when the engine is built: every chunk is sized against the same figure
        (on CUDA, free memory read mid-run would count the allocator's own cache against later chunks)."""
        return self._budget

    def _measured_budget(self) -> int:
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb * 2**20
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free // 4
        return _CPU_BUDGET_MB * 2**20

    def explain(self, x: np.ndarray, ids: Sequence[str]) -> Explanations:
        """Explain decisions ``x`` (float64 [B, d], categoricals as codes) with ids ``ids``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.stats.num_features or len(ids) != len(x):
            raise ValueError(f"x must be [B, {self.stats.num_features}] with one id per row, got {x.shape}")
        ids = list(ids)
        if not len(x):
            return Explanations.empty(self.top_k, self.stats.num_features)
        if self.stability_runs > 1:
            explanations = self._explain_stable(x, ids)
        else:
            parts: list[Explanations] = []
            self._in_chunks(len(x), self.num_samples, lambda a, b: parts.append(self._explain_chunk(x[a:b], ids[a:b])))
            explanations = Explanations.concatenate(parts)
        if self.deletion_check:
            self._check_deletion(explanations, x)
        return explanations

    @property
    def reason_slots(self) -> int:
        """Slots for the principal factors at the front of ``feature_index``: k."""
        return min(self.top_k, self.stats.num_features)

    def _in_chunks(self, count: int, samples: int, work: Callable[[int, int], None]) -> None:
        """Run ``work(start, stop)`` over ``count`` decisions in chunks of the memory budget for ``samples`` rows
        per decision. On out-of-memory the chunk is halved and retried; a failing compiler falls back to eager."""
        start = 0
        while start < count:
            # the budget's decisions for this many samples (moments do not shrink with the samples), and no more
            # than an out-of-memory retry left
            size = max(1, min(self.decisions_per_chunk(samples), self._chunk * self.num_samples // samples))
            stop = min(start + size, count)
            try:
                work(start, stop)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                log.warning("torch.compile failed on %s (%s): continuing without it", self.device, error)
                self.compile = False
                self._build_kernels()
                continue
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self._chunk = max(1, self._chunk // 2)
                log.warning("out of memory on %s: retrying with %d decisions per chunk", self.device, self._chunk)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop

    def _check_deletion(self, explanations: Explanations, x: np.ndarray) -> None:
        check = DeletionCheck(self.stats)
        delta, holds = np.zeros(len(x)), np.zeros(len(x), dtype=bool)
        k = self.reason_slots  # the principal factors (the kernel-matched engines add favourable ones after)
        features, weights = explanations.feature_index[:, :k], explanations.weights[:, :k]

        def work(a: int, b: int) -> None:
            delta[a:b], holds[a:b] = check.run(
                self._predict, self.device, x[a:b], features[a:b], weights[a:b], explanations.model_pred[a:b],
            )

        self._in_chunks(len(x), MAX_COMBINATIONS, work)
        explanations.deletion_delta, explanations.deletion_holds = delta, holds

    # ------------------------------------------------------------------ stability and adaptive sample size

    def _explain_stable(self, x: np.ndarray, ids: list[str]) -> Explanations:
        """R independent streams per decision, S/R samples each (so a decision stable at once costs what the
        plain engine does); decisions whose top-k is not stable get twice the samples per stream, round after
        round, up to ``max_samples_factor`` x S in all; the reported fit pools every sample drawn."""
        n, s = len(x), stream_samples(self.num_samples, self.stability_runs)
        out = Collector(ids, self.top_k, self.stats.num_features)
        cap = s * self.max_samples_factor
        carried: list[tuple[np.ndarray, WeightedMoments]] = []

        def first(a: int, b: int) -> None:
            groups, out.model_pred[a:b] = self.first_round_groups(x[a:b], ids[a:b])
            unstable = self._evaluate(np.arange(a, b), groups, s, out)
            if self.adaptive and s < cap and unstable.any():
                mask = torch.as_tensor(unstable, device=groups.czz.device)
                carried.append((np.arange(a, b)[unstable], to_device(index_groups(groups, mask), HOST)))

        self._in_chunks(n, s, first)
        self._adapt(x, ids, carried, s, lambda rows, groups, per_stream: self._evaluate(rows, groups, per_stream, out))
        return out.explanations(self.with_all_weights)

    def _adapt(self, x: np.ndarray, ids: list[str], carried: list[tuple[np.ndarray, WeightedMoments]], s: int,
               evaluate: Callable[[np.ndarray, WeightedMoments, int], np.ndarray], stream_base: int = 0,
               tilt: float | None = None, cap: int | None = None, minimum: int = 0) -> None:
        """Adaptation rounds for the ``carried`` decisions (their rows and moments of ``s`` samples per stream, on
        the host): twice the samples per stream each round, up to ``cap`` (default ``max_samples_factor`` x s),
        while ``evaluate(rows, groups, per_stream)`` calls them unstable or they have fewer than ``minimum``
        per stream. Streams ``stream_base + r`` continue; ``tilt``: kernel-matched sampling."""
        cap = cap or s * self.max_samples_factor
        per_stream, rnd = s, 0
        while carried and per_stream < cap:
            rnd += 1
            index = np.concatenate([c[0] for c in carried])
            stored = concat_groups([c[1] for c in carried])
            carried = next_round = []
            added = per_stream  # doubling: as many new samples per stream as it already has
            per_stream *= 2

            def more(a: int, b: int, index=index, stored=stored, added=added, per_stream=per_stream, rnd=rnd,
                     next_round=next_round) -> None:
                rows = index[a:b]
                sub_ids = [ids[i] for i in rows]
                keys, own_rows, decisions = self._inputs(x[rows], sub_ids)
                old = to_device(index_groups(stored, slice(a, b)), self.device)
                streams = []
                for replicate in range(self.stability_runs):
                    same_bin, target = self._draw(decisions, own_rows, sub_ids, keys, added, stream_base + replicate,
                                                  adaptation_round=rnd, first_row=added - 1, tilt=tilt)
                    lo, hi = replicate * BLOCKS, (replicate + 1) * BLOCKS
                    previous = index_groups(old, (slice(None), slice(lo, hi)))
                    streams.append(pairwise_merge(previous, self._block_moments(same_bin, target)))
                groups = concat_groups(streams, dim=1)
                # below ``minimum`` the decision goes on whatever it looks like: evaluating it would be thrown away
                again = np.ones(len(rows), bool) if per_stream < minimum else evaluate(rows, groups, per_stream)
                if per_stream < cap and again.any():
                    mask = torch.as_tensor(again, device=groups.czz.device)
                    next_round.append((rows[again], to_device(index_groups(groups, mask), HOST)))

            self._in_chunks(len(index), added, more)

    def first_round_groups(self, x: np.ndarray, ids: list[str], samples: int | None = None, stream_base: int = 0,
                           tilt: float | None = None) -> tuple[WeightedMoments, np.ndarray]:
        """The first round of the stable path for decisions ``x`` (one chunk): the block moments of every
        stream's ``samples`` (default S/R) samples ([B, 8R, ...], stream-major) and the model's output at each
        decision. Streams ``stream_base + r``; ``tilt``: kernel-matched sampling."""
        keys, own_rows, decisions = self._inputs(x, ids)
        s = samples or stream_samples(self.num_samples, self.stability_runs)
        streams, model_pred = [], np.zeros(len(ids))
        for replicate in range(self.stability_runs):
            same_bin, target = self._draw(decisions, own_rows, ids, keys, s, stream_base + replicate, tilt=tilt)
            if replicate == 0:
                model_pred = target[:, 0].cpu().numpy()
            streams.append(self._block_moments(same_bin, target))
        return concat_groups(streams, dim=1), model_pred

    def _inputs(self, x: np.ndarray, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.device
        keys = torch.as_tensor(decision_keys(self.seed, ids), device=device)
        own_rows = torch.as_tensor(self._sampler.own_rows(self.stats.discretize(x)), device=device)
        return keys, own_rows, torch.as_tensor(x, dtype=torch.float32, device=device)

    def _draw(self, decisions: torch.Tensor, own_rows: torch.Tensor, ids: list[str], keys: torch.Tensor,
              samples: int, stream: int, adaptation_round: int = 0, first_row: int = 0, tilt: float | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of one stream and the model's output on them: (same_bin [B, n, d], target [B, n]). Round 0
        starts with row 0, the decision itself; later rounds add ``samples`` rows after the stream's first
        ``first_row + 1`` (the sampler's row 0 of those draws, the decision again, is left out). ``tilt``: the
        kernel's factor per differing feature, for kernel-matched sampling (:meth:`QuartileSampler.sample`)."""
        batch = len(ids)
        keep_first = adaptation_round == 0
        drawn = samples if keep_first else samples + 1
        tilts = None if tilt is None else torch.full((batch,), tilt, dtype=torch.float64, device=self.device)
        perturbed = self._sampler.sample(decisions, own_rows, keys, drawn, stream, adaptation_round, first_row,
                                         tilt=tilts)
        target = self._predict(perturbed.inputs.view(batch * drawn, -1)).view(batch, drawn)
        _check_finite(target, ids, self.model.description)
        design = self._representation(perturbed, own_rows, ids)
        if keep_first:
            return design, target
        return design[:, 1:], target[:, 1:]

    def _representation(self, perturbed: Perturbations, own_rows: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
        """The interpretable representation the surrogate is fitted on, [B, n, columns], for decisions ``ids``:
        lime's binary "same bin as the decision" indicators (the per-bin method overrides it:
        :mod:`tasks.engine.perbin`)."""
        return perturbed.same_bin

    def _block_moments(self, same_bin: torch.Tensor, target: torch.Tensor) -> WeightedMoments:
        """Weighted moments of ``BLOCKS`` contiguous blocks of one stream's samples: [B, BLOCKS, ...]."""
        bounds = torch.tensor_split(torch.arange(same_bin.shape[1]), BLOCKS)
        parts = [
            WeightedMoments(*self._moments(same_bin[:, int(r[0]) : int(r[-1]) + 1],
                                           target[:, int(r[0]) : int(r[-1]) + 1], self.stats.kernel_width))
            for r in bounds
            if len(r)
        ]
        return stack_groups(parts)

    def _evaluate(self, rows: np.ndarray, groups: WeightedMoments, per_stream: int, out: Collector) -> np.ndarray:
        """Fit the pooled samples and every stream's own, test the selection; write decisions ``rows`` of
        ``out``; return the unstable ones (bool [len(rows)])."""
        runs = self.stability_runs
        count = groups.total_weight.shape[1]
        per_run = count // runs
        pooled = flatten(combine(groups, torch.ones(1, count, dtype=torch.float64)))
        own = torch.block_diag(*[torch.ones(1, per_run, dtype=torch.float64)] * runs)
        streams = flatten(combine(groups, own))
        method = selection_method(self.feature_selection, self.top_k)
        selected = select_features(pooled, self.top_k, method)
        fit = ridge_on(pooled, selected, FINAL_ALPHA)
        order = torch.argsort(fit.coef.abs(), dim=1, descending=True, stable=True)
        stream_fit = ridge_on(streams, select_features(streams, self.top_k, method), FINAL_ALPHA)
        stream_order = torch.argsort(stream_fit.coef.abs(), dim=1, descending=True, stable=True)
        ordered = stream_fit.features.gather(1, stream_order).view(len(rows), runs, -1)
        share, same_order = replicate_agreement(ordered)
        margin = selection_margin(pooled, selected, method)
        z = jackknife_z(groups, selected, margin, method)
        stable = (share >= 1.0) & (z >= critical_value(self.confidence, count))
        out.feature_index[rows] = fit.features.gather(1, order).cpu().numpy()
        out.weights[rows] = fit.coef.gather(1, order).cpu().numpy()
        out.intercept[rows] = fit.intercept.cpu().numpy()
        out.local_pred[rows] = (fit.intercept + fit.coef.sum(1)).cpu().numpy()
        out.fidelity[rows] = fit.score.cpu().numpy()
        if self.with_all_weights:
            out.all_weights[rows] = ridge_on(pooled, all_features(pooled), FINAL_ALPHA).coef.cpu().numpy()
        out.stability[rows] = share.cpu().numpy()
        out.order_agrees[rows] = same_order.cpu().numpy()
        out.selection_z[rows] = z.cpu().numpy()
        out.stable[rows] = stable.cpu().numpy()
        out.num_samples[rows] = per_stream * runs
        return ~stable.cpu().numpy()

    def _explain_chunk(self, x: np.ndarray, ids: list[str]) -> Explanations:
        device, s, batch = self.device, self.num_samples, len(ids)
        keys = torch.as_tensor(decision_keys(self.seed, ids), device=device)
        own_rows = torch.as_tensor(self._sampler.own_rows(self.stats.discretize(x)), device=device)
        decisions = torch.as_tensor(x, dtype=torch.float32, device=device)
        perturbed = self._sampler.sample(decisions, own_rows, keys, s)

        target = self._predict(perturbed.inputs.view(batch * s, -1)).view(batch, s)
        _check_finite(target, ids, self.model.description)
        del perturbed.inputs

        moments = WeightedMoments(*self._moments(perturbed.same_bin, target, self.stats.kernel_width))
        del perturbed
        selected = select_features(moments, self.top_k, self.feature_selection)
        fit = ridge_on(moments, selected, FINAL_ALPHA)

        order = torch.argsort(fit.coef.abs(), dim=1, descending=True, stable=True)
        features = fit.features.gather(1, order)
        coef = fit.coef.gather(1, order)
        all_weights = None
        if self.with_all_weights:
            all_weights = ridge_on(moments, all_features(moments), FINAL_ALPHA).coef.cpu().numpy()
        return Explanations(
            ids=ids,
            feature_index=features.cpu().numpy(),
            weights=coef.cpu().numpy(),
            intercept=fit.intercept.cpu().numpy(),
            # row 0 is all ones in the binary representation, so the surrogate's prediction there is b + Σβ
            local_pred=(fit.intercept + fit.coef.sum(1)).cpu().numpy(),
            model_pred=target[:, 0].cpu().numpy(),
            fidelity=fit.score.cpu().numpy(),
            all_weights=all_weights,
            num_samples=np.full(batch, s, dtype=np.int64),
        )

    def _predict(self, rows: torch.Tensor) -> torch.Tensor:
        """The explained class's probability for every row, float64 [n], in model calls of bounded size."""
        native = getattr(self.model, "rows_per_call", None)  # tree libraries: large calls, threaded inside
        step = self.model_rows or ((native or _CPU_MODEL_ROWS) if self.device.type == "cpu" else len(rows))
        out = torch.empty(len(rows), dtype=torch.float64, device=self.device)
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            probabilities = self.model(part)
            if probabilities.shape[0] != part.shape[0]:
                raise ModelError(
                    f"{self.model.description}: returned {probabilities.shape[0]} rows for {part.shape[0]}"
                )
            out[start : start + step] = probabilities[:, self.explain_index]
        return out


def _check_finite(target: torch.Tensor, ids: Sequence[str], description: str) -> None:
    bad = ~torch.isfinite(target).all(1)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise ModelError(f"{description}: non-finite output for decision {ids[first]!r}")


HOST = torch.device("cpu")
"""The host: where the stable path keeps the moments of decisions carried to the next adaptation round."""


def selection_method(method: str, k: int) -> str:
    """The feature selection ``method`` resolves to; lime's "auto": forward selection for k <= 6, else highest
    weights."""
    if method == "auto":
        return "forward_selection" if k <= 6 else "highest_weights"
    return method
