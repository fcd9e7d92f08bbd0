"""The deletion check: does removing a decision's top factors move the model's output as the explanation says?

A factor is lime's "the feature is in the decision's own bin/category" (z_j = 1); removing it means z_j = 0:
the feature takes another bin or category of the reference. For the decision's top-k features, every
combination of *other* values is enumerated, each numeric bin represented by its reference mean (the same
bin means lime keeps), each category by its code and a missing slot (docs/method.md, "Missing values") by
NaN, weighted by the reference frequencies (renormalised without the decision's own value, independently per
feature, as lime samples them). All other features keep
the decision's values. Then

    deletion_delta = Σ_c weight_c · f(x with the top factors replaced by combination c) − f(x)

and the check *holds* when the output moves against the factors' net stated effect: ``delta · Σβ_top < 0``
(factors that together raised the explained class's probability lower it when removed, and vice versa).
Deterministic (no random numbers) and cheap: at most ``MAX_COMBINATIONS`` model rows per decision; past that,
each feature keeps only its most frequent other values (the rarest are dropped first).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from tasks.engine.stats import ReferenceStats

MAX_COMBINATIONS = 256


class DeletionCheck:
    def __init__(self, stats: ReferenceStats) -> None:
        self.stats = stats
        # per feature: the reference's values (bins/codes), their frequencies and their model-input values
        self._values = [np.asarray(f.values, dtype=np.int64) for f in stats.features]
        self._freqs = [np.asarray(f.frequencies, dtype=np.float64) for f in stats.features]
        self._inputs = [np.asarray([f.model_input(v) for v in f.values], dtype=np.float64) for f in stats.features]

    def _alternatives(self, j: int, own: int, keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        other = self._values[j] != own
        inputs, freqs = self._inputs[j][other], self._freqs[j][other]
        if keep is not None and len(freqs) > keep:
            top = np.sort(np.argsort(-freqs, kind="stable")[:keep])
            inputs, freqs = inputs[top], freqs[top]
        total = freqs.sum()
        return inputs, (freqs / total if total > 0 else freqs)

    def rows(self, x: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Model rows for every decision's replacements: (rows [n, d], weights [n], owner decision [n])."""
        own = self.stats.discretize(x)
        all_rows, all_weights, owners = [], [], []
        for b in range(len(x)):
            shown = features[b][features[b] >= 0]  # -1: fewer factors than k
            choices = [self._alternatives(int(j), int(own[b, j])) for j in shown]
            while np.prod([max(len(c[1]), 1) for c in choices]) > MAX_COMBINATIONS:
                widest = int(np.argmax([len(c[1]) for c in choices]))
                j = int(shown[widest])
                choices[widest] = self._alternatives(j, int(own[b, j]), keep=len(choices[widest][1]) - 1)
            usable = [i for i, c in enumerate(choices) if len(c[1])]  # a feature with no other value stays
            grids = list(itertools.product(*[range(len(choices[i][1])) for i in usable]))
            block = np.repeat(x[b][None, :], len(grids), axis=0)
            weight = np.ones(len(grids))
            for column, i in enumerate(usable):
                pick = np.asarray([g[column] for g in grids], dtype=np.int64)
                block[:, int(shown[i])] = choices[i][0][pick]
                weight *= choices[i][1][pick]
            all_rows.append(block)
            all_weights.append(weight)
            owners.append(np.full(len(grids), b, dtype=np.int64))
        if not all_rows:
            d = self.stats.num_features
            return np.zeros((0, d)), np.zeros(0), np.zeros(0, dtype=np.int64)
        return np.concatenate(all_rows), np.concatenate(all_weights), np.concatenate(owners)

    def run(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        x: np.ndarray,
        features: np.ndarray,
        weights: np.ndarray,
        model_pred: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(deletion_delta [B], deletion_holds [B])``; ``predict`` maps float32 rows to the explained class's
        probability (float64)."""
        rows, weight, owner = self.rows(x, features)
        if len(rows) == 0:
            return np.zeros(0), np.zeros(0, dtype=bool)
        out = predict(torch.as_tensor(rows, dtype=torch.float32, device=device)).double().cpu().numpy()
        expected = np.bincount(owner, weights=weight * out, minlength=len(x))
        delta = expected - np.asarray(model_pred, dtype=np.float64)
        stated = np.asarray(weights, dtype=np.float64).sum(1)
        return delta, delta * stated < 0
