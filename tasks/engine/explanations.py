"""The engine's result type: :class:`Explanations`, one row per decision, and the :class:`Collector` that the
stable path (and the kernel-matched engine) fills round by round.

Every engine returns it: the batched engine (:mod:`tasks.engine.explainer`), the kernel-matched engine
(:mod:`tasks.engine.matched`) and the reference ``lime`` package (:mod:`tasks.engine.reference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Explanations:
    """One row per decision. Factors are ordered by |weight|, largest first."""

    ids: list[str]
    feature_index: np.ndarray  # int64 [B, k]
    weights: np.ndarray  # float64 [B, k]
    intercept: np.ndarray  # [B]
    local_pred: np.ndarray  # [B]
    model_pred: np.ndarray  # [B]
    fidelity: np.ndarray  # [B]: weighted R² of the surrogate on its samples (lime's `score`)
    all_weights: np.ndarray | None = None  # [B, d]: Ridge(alpha=1) on every feature, for audits
    # Quality (docs/method.md, "Stability" and "Deletion check"); None where not computed.
    stability: np.ndarray | None = None  # [B]: share of stream pairs whose top-k SET agrees
    order_agrees: np.ndarray | None = None  # bool [B]: every stream gives the same ORDERED top-k
    selection_z: np.ndarray | None = None  # [B]: selection margin / its jackknife standard error
    stable: np.ndarray | None = None  # bool [B]: streams agree and selection_z >= the critical value
    num_samples: np.ndarray | None = None  # int64 [B]: samples behind the reported fit (all streams)
    deletion_delta: np.ndarray | None = None  # [B]: model output with the top factors removed, minus model_pred
    deletion_holds: np.ndarray | None = None  # bool [B]: the output moved against the factors' net effect
    # Kernel-matched engine (tasks/engine/matched.py); None for lime's method.
    kernel_width: np.ndarray | None = None  # [B]: the kernel width the decision was explained at
    effective_samples: np.ndarray | None = None  # [B]: samples expected to leave the applicant's point
    fidelity_widest: np.ndarray | None = None  # [B]: held-out fidelity at the widest width (lime's 0.75·√d)
    width_found: np.ndarray | None = None  # bool [B]: a width of the grid passed; False: the widest was kept
    tied: np.ndarray | None = None  # bool [B]: k + 1 reasons named, the last two weighing about the same

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concatenate(parts: Sequence[Explanations]) -> Explanations:
        """Join explanations of consecutive chunks."""

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return Explanations(ids=[i for p in parts for i in p.ids], **{name: joined(name) for name in _ARRAYS})

    @staticmethod
    def empty(k: int, d: int) -> Explanations:
        """Explanations of no decision: ``k`` factors and ``d`` features per row."""
        return Explanations(
            ids=[],
            feature_index=np.zeros((0, k), dtype=np.int64),
            weights=np.zeros((0, k)),
            intercept=np.zeros(0),
            local_pred=np.zeros(0),
            model_pred=np.zeros(0),
            fidelity=np.zeros(0),
            all_weights=np.zeros((0, d)),
        )


_ARRAYS = (
    "feature_index", "weights", "intercept", "local_pred", "model_pred", "fidelity", "all_weights", "stability",
    "order_agrees", "selection_z", "stable", "num_samples", "deletion_delta", "deletion_holds", "kernel_width",
    "effective_samples", "fidelity_widest", "width_found", "tied",
)


class Collector:
    """Per-decision results of the stable path, filled round by round (decisions re-fitted overwrite)."""

    def __init__(self, ids: list[str], k: int, d: int) -> None:
        n = len(ids)
        k = min(k, d)
        self.ids = ids
        self.feature_index = np.zeros((n, k), dtype=np.int64)
        self.weights = np.zeros((n, k))
        self.intercept, self.local_pred, self.model_pred, self.fidelity = (np.zeros(n) for _ in range(4))
        self.all_weights = np.zeros((n, d))
        self.stability, self.selection_z = np.zeros(n), np.zeros(n)
        self.order_agrees, self.stable = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        self.num_samples = np.zeros(n, dtype=np.int64)

    def explanations(self, with_all_weights: bool) -> Explanations:
        return Explanations(
            ids=self.ids, feature_index=self.feature_index, weights=self.weights, intercept=self.intercept,
            local_pred=self.local_pred, model_pred=self.model_pred, fidelity=self.fidelity,
            all_weights=self.all_weights if with_all_weights else None, stability=self.stability,
            order_agrees=self.order_agrees, selection_z=self.selection_z, stable=self.stable,
            num_samples=self.num_samples,
        )

