"""Batched LIME for tabular credit decisions, faithful to ``lime`` 0.2.0.1 (see README, "Method")."""

from tasks.engine.explainer import BatchedLime, Explanations, make_explainer
from tasks.engine.rng import decision_key, decision_keys
from tasks.engine.stats import FeatureStats, ReferenceStats, fit_reference

__all__ = [
    "BatchedLime",
    "Explanations",
    "FeatureStats",
    "ReferenceStats",
    "decision_key",
    "decision_keys",
    "fit_reference",
    "make_explainer",
]
