"""The embedded demo: a synthetic UK consumer-credit portfolio and a small torch credit model.

``build_demo`` writes the three files ``config/demo.toml`` points at (``decisions.parquet``,
``reference.parquet``, ``model.pt``), deterministically, in seconds on one CPU thread, cached on disk. By module:

- ``portfolio``: the features (``FEATURES``, the single source config/demo.toml must match), the synthetic
  applications (:func:`generate_portfolio`), the gaps of real applications (:func:`add_gaps`) and the outcomes
  (:func:`simulate_outcomes`, from the latent risk :func:`default_logit`).
- ``model``: the credit model (:class:`CreditModel`, its inputs :func:`model_inputs`), its deterministic training
  (:func:`train_model`) and :func:`roc_auc`.
- ``build``: the files, atomic and cached (:func:`build_demo`, :func:`default_demo_dir`, ``GENERATOR_VERSION``).

``build_demo(gaps=False)`` writes the complete portfolio and the model without missing indicators.
"""

from tasks.demo.build import GENERATOR_VERSION, DemoArtifacts, build_demo, default_demo_dir
from tasks.demo.model import CLASSES, CreditModel, model_inputs, roc_auc, train_model
from tasks.demo.portfolio import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FEATURES,
    NUMERIC_FEATURES,
    add_gaps,
    default_logit,
    generate_portfolio,
    simulate_outcomes,
)

__all__ = [
    "CATEGORICAL_FEATURES",
    "CLASSES",
    "FEATURES",
    "FEATURE_NAMES",
    "GENERATOR_VERSION",
    "NUMERIC_FEATURES",
    "CreditModel",
    "DemoArtifacts",
    "add_gaps",
    "build_demo",
    "default_demo_dir",
    "default_logit",
    "generate_portfolio",
    "model_inputs",
    "roc_auc",
    "simulate_outcomes",
    "train_model",
]
