"""From per-decision explanations to the public explanations table (one row per decision and rank)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import Config, FeatureConfig

if TYPE_CHECKING:  # the engine imports torch; the flow process only needs the schema
    from tasks.engine import Explanations, ReferenceStats


def explanation_schema(id_column: str) -> pa.Schema:
    """The Arrow schema of ``explanations.parquet`` (a contract: see README, "Outputs")."""
    return pa.schema(
        [
            (id_column, pa.string()),
            ("rank", pa.int32()),
            ("feature", pa.string()),
            ("label", pa.string()),
            ("condition", pa.string()),
            ("value", pa.string()),
            ("weight", pa.float64()),
            ("share", pa.float64()),
            ("direction", pa.string()),
            ("fidelity", pa.float64()),
            ("local_pred", pa.float64()),
            ("model_pred", pa.float64()),
            ("intercept", pa.float64()),
            ("needs_review", pa.bool_()),
        ]
    )


def format_value(feature: FeatureConfig, value: float) -> str:
    """The decision's own value as a customer reads it: the category's text, or the number to its decimals."""
    if feature.kind == "categorical":
        code = int(value)
        categories = feature.categories or []
        return categories[code] if 0 <= code < len(categories) else str(code)
    return f"{value:,.{feature.decimals}f}"


def direction_of(weight: float) -> str:
    """'raises' or 'lowers' the explained class's probability; 'none' for a factor with exactly zero weight."""
    return "raises" if weight > 0 else "lowers" if weight < 0 else "none"


def shares(weights: np.ndarray) -> np.ndarray:
    """|weight| as a percentage of the summed |weight| of each decision's factors (rows sum to 100, or 0)."""
    magnitude = np.abs(weights)
    total = magnitude.sum(axis=1, keepdims=True)
    return np.divide(magnitude * 100.0, total, out=np.zeros_like(magnitude), where=total > 0)


def explanation_table(expl: Explanations, x: np.ndarray, stats: ReferenceStats, config: Config) -> pd.DataFrame:
    """One row per (decision, rank), columns as :func:`explanation_schema`."""
    id_column = config.data.id_column
    k = expl.feature_index.shape[1]
    share = shares(expl.weights)
    needs_review = expl.fidelity < config.review.min_fidelity
    rows: dict[str, list] = {name: [] for name in explanation_schema(id_column).names}
    for b, decision_id in enumerate(expl.ids):
        for rank in range(k):
            j = int(expl.feature_index[b, rank])
            feature = config.features[j]
            weight = float(expl.weights[b, rank])
            rows[id_column].append(decision_id)
            rows["rank"].append(rank + 1)
            rows["feature"].append(feature.name)
            rows["label"].append(feature.label)
            rows["condition"].append(stats.features[j].condition(x[b, j]))
            rows["value"].append(format_value(feature, float(x[b, j])))
            rows["weight"].append(weight)
            rows["share"].append(float(share[b, rank]))
            rows["direction"].append(direction_of(weight))
            rows["fidelity"].append(float(expl.fidelity[b]))
            rows["local_pred"].append(float(expl.local_pred[b]))
            rows["model_pred"].append(float(expl.model_pred[b]))
            rows["intercept"].append(float(expl.intercept[b]))
            rows["needs_review"].append(bool(needs_review[b]))
    return pa.Table.from_pydict(rows, schema=explanation_schema(id_column)).to_pandas()
