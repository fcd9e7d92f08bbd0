"""The run summary's "Prohibited bases" section (templates/run_summary/protected.html), only in runs with
protected features: per protected feature, how often it would have been a principal reason, its mean weight there,
and how many letters omit it. The figures are the manifest's ``protected`` (tasks/explain/protected.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from tasks.explain.protected import PROTECTED_FILE, protected_figures
from tasks.inputs.config import Config
from tasks.inputs.protected import protected_features
from tasks.report.text import clean_text, fill


def figures_from_frame(explanations: pd.DataFrame, config: Config) -> dict[str, Any] | None:
    """The figures from an explanations table in memory (a re-render reads the whole table); None in a run
    without protected features. The flow computes the same from the file (:func:`write_protected`)."""
    if not protected_features(config):
        return None
    id_column = config.data.id_column
    columns = [id_column, "role", "feature", "weight"]
    if "withheld" in explanations.columns and all(c in explanations.columns for c in columns):
        rows = explanations.loc[explanations["withheld"].fillna(False).astype(bool), columns]
    else:
        rows = pd.DataFrame({c: pd.Series([], dtype=float if c == "weight" else object) for c in columns})
    table = pa.table({id_column: pa.array(rows[id_column].astype(str).tolist(), pa.string()),
                      "role": pa.array(rows["role"].tolist(), pa.string()),
                      "feature": pa.array(rows["feature"].tolist(), pa.string()),
                      "weight": pa.array(rows["weight"].astype(float).tolist(), pa.float64())})
    return protected_figures(table, config)


def protected_context(figures: Mapping[str, Any] | None, ts: Mapping[str, str]) -> dict[str, Any] | None:
    """The section's template context (texts from config/texts [summary]); None without figures."""
    if not figures:
        return None
    rows = []
    for item in figures["features"]:
        rule = (fill(ts["protected_rule_age"], threshold=f"{item['age_threshold']:g}") if item["rule"] == "age"
                else ts["protected_rule_prohibited"])
        rows.append({"label": clean_text(item["label"], limit=120), "rule": rule,
                     "reasons": f"{item['reason_decisions']:,}",
                     "weight": "—" if item["mean_weight"] is None else f"{item['mean_weight']:+.4f}",
                     "omitted": f"{item['omitted_decisions']:,}"})
    return {"intro": fill(ts["protected_intro"], file=PROTECTED_FILE), "features": rows,
            "total": fill(ts["protected_total"], count=f"{figures['review_decisions']:,}")}
