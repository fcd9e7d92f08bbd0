"""Batched LIME for tabular credit decisions, faithful to ``lime`` 0.2.0.1 (see docs/method-overview.md).

Modules, each depending only on those listed before it: ``rng``, ``sobol``, ``stats``, ``sampler``,
``surrogate``, ``stability``, ``deletion`` (the pieces); ``explanations`` (the result type); the engines
``explainer`` (:class:`BatchedLime`), ``matched`` (``KernelMatchedLime``, the default method) and
``reference`` (the ``lime`` package); ``factory`` (:func:`make_explainer`, the configured engine).
"""

from tasks.engine.explainer import BatchedLime
from tasks.engine.explanations import Explanations
from tasks.engine.factory import make_explainer
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
