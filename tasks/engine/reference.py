"""The reference engine: the original ``lime`` package, one decision at a time, behind the same interface.

Slow (about 0.1 s per decision at 5,000 samples); for auditors who want the canonical implementation and as
the oracle in tests. Each decision gets its own ``numpy.random.RandomState`` seeded from its stream key
(shared by lime's sampler and discretizer, as lime does), so its result does not depend on the batch either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lime.lime_tabular import LimeTabularExplainer

from tasks.engine.deletion import DeletionCheck
from tasks.engine.explanations import Explanations
from tasks.engine.rng import decision_keys
from tasks.engine.stats import ReferenceStats
from tasks.inputs.config import Config
from tasks.inputs.model import LoadedModel


@dataclass
class LimeReference:
    stats: ReferenceStats
    model: LoadedModel
    explain_index: int
    num_samples: int = 5000
    top_k: int = 3
    seed: int = 0
    feature_selection: str = "auto"

    def __post_init__(self) -> None:
        if self.stats.data is None:
            raise ValueError("the lime engine needs the reference data: fit_reference keeps it")
        if np.isnan(self.stats.data).any():  # tasks.inputs.data.read_reference says so first, naming the column
            raise ValueError("the lime engine cannot sample missing values (the lime package has no support for "
                             "them): use engine = \"batched\"")
        categorical = [j for j, f in enumerate(self.stats.features) if f.kind == "categorical"]
        self.explainer = LimeTabularExplainer(
            self.stats.data,
            mode="classification",
            feature_names=self.stats.feature_names,
            categorical_features=categorical,
            categorical_names={j: list(self.stats.features[j].categories) for j in categorical},
            kernel_width=self.stats.kernel_width,
            discretize_continuous=True,
            discretizer="quartile",
            feature_selection=self.feature_selection,
            random_state=self.seed % 2**32,
        )

    @classmethod
    def from_config(cls, config: Config, stats: ReferenceStats, model: LoadedModel) -> LimeReference:
        return cls(
            stats=stats,
            model=model,
            explain_index=config.model.explain_index,
            num_samples=config.explain.num_samples,
            top_k=config.explain.top_k,
            seed=config.explain.seed,
            feature_selection=config.explain.feature_selection,
        )

    def predict(self, rows: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(rows, dtype=torch.float32, device=self.model.device)
        return self.model(tensor).to(torch.float64).cpu().numpy()

    def explain(self, x: np.ndarray, ids: Sequence[str]) -> Explanations:
        x = np.asarray(x, dtype=np.float64)
        keys = decision_keys(self.seed, list(ids))
        k = min(self.top_k, self.stats.num_features)
        features = np.zeros((len(x), k), dtype=np.int64)
        weights = np.zeros((len(x), k))
        intercept, local_pred, fidelity = np.zeros(len(x)), np.zeros(len(x)), np.zeros(len(x))
        model_pred = self.predict(x)[:, self.explain_index] if len(x) else np.zeros(0)
        for b, row in enumerate(x):
            state = np.random.RandomState(int(keys[b]) % 2**32)
            self.explainer.random_state = state
            self.explainer.discretizer.random_state = state
            explanation = self.explainer.explain_instance(
                row, self.predict, labels=(self.explain_index,), num_features=k, num_samples=self.num_samples
            )
            pairs = explanation.local_exp[self.explain_index]
            features[b] = [int(f) for f, _ in pairs]
            weights[b] = [float(w) for _, w in pairs]
            intercept[b] = float(explanation.intercept[self.explain_index])
            local_pred[b] = float(np.ravel(explanation.local_pred)[0])
            fidelity[b] = float(explanation.score)
        model_pred = np.asarray(model_pred, dtype=np.float64)
        delta, holds = DeletionCheck(self.stats).run(
            lambda rows: torch.as_tensor(self.predict(rows.cpu().numpy())[:, self.explain_index]),
            torch.device("cpu"), x, features, weights, model_pred,
        ) if len(x) else (np.zeros(0), np.zeros(0, dtype=bool))
        return Explanations(
            ids=list(ids),
            feature_index=features,
            weights=weights,
            intercept=intercept,
            local_pred=local_pred,
            model_pred=model_pred,
            fidelity=fidelity,
            all_weights=None,
            num_samples=np.full(len(x), self.num_samples, dtype=np.int64),
            deletion_delta=delta,
            deletion_holds=holds,
        )
