"""Fixtures for the engine tests: the embedded demo portfolio and credit model (built once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.demo import FEATURES, build_demo, model_inputs
from tasks.engine import ReferenceStats, fit_reference
from tasks.inputs.config import FeatureConfig, ModelConfig
from tasks.inputs.model import LoadedModel, load_model


@dataclass
class Demo:
    features: list[FeatureConfig]
    reference: np.ndarray
    decisions: np.ndarray
    ids: list[str]
    stats: ReferenceStats
    model: LoadedModel
    model_path: Path


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    artifacts = build_demo(tmp_path_factory.mktemp("demo"), gaps=False)  # complete: the lime oracle has no gaps
    features = [FeatureConfig(**f) for f in FEATURES]
    reference = model_inputs(pd.read_parquet(artifacts.reference)).astype(np.float64)
    table = pd.read_parquet(artifacts.decisions)
    model = load_model(
        ModelConfig(path=artifacts.model, classes=["approved", "declined"], explain="declined"), len(features)
    )
    return Demo(
        features=features,
        reference=reference,
        decisions=model_inputs(table).astype(np.float64),
        ids=table["customer_id"].astype(str).tolist(),
        stats=fit_reference(reference, features),
        model=model,
        model_path=artifacts.model,
    )
