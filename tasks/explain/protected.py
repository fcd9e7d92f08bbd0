"""Protected features in a run's explanations: which factors a letter withholds, and the run's figures for them.

The engine ranks every feature alike: ``explanations.parquet`` keeps what the model leaned on. A factor whose
feature is protected (tasks/inputs/protected.py) is marked ``withheld`` there; the letter states the others only,
and a decision where a withheld factor would be a principal reason goes to review (gate ``protected-basis``).
The figures below are recomputed from ``explanations.parquet`` alone, so an auditor can check them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.inputs.config import Config, FeatureConfig
from tasks.inputs.protected import protected_features

PROTECTED_FILE = "protected.parquet"
"""Per protected feature, the decisions where it would have been a principal reason (one row each)."""

PROTECTED_SCHEMA_FIELDS = (("rank", pa.int32()), ("feature", pa.string()), ("label", pa.string()),
                           ("weight", pa.float64()), ("value", pa.string()))


def withheld(feature: FeatureConfig, role: str, value: float) -> bool:
    """Whether a letter withholds this factor: a protected feature in any role; an age feature
    (``protected = "age"``) where it would be a principal reason of an applicant aged ``age_threshold`` or more
    (Regulation B, 12 CFR 1002.6(b)(2)(ii): an elderly applicant's age is never assigned a negative value)."""
    if feature.protected is True:
        return True
    if feature.protected == "age":
        return role == "reason" and not math.isnan(value) and value >= feature.age_limit
    return False


def read_withheld(explanations: str | Path, id_column: str) -> pa.Table:
    """The withheld rows of ``explanations.parquet`` (id, rank, role, feature, label, weight, value): a filtered
    read, so memory follows the withheld rows, not the run. Empty for a table without the column."""
    names = pq.read_schema(explanations).names
    columns = [id_column, "rank", "role", "feature", "label", "weight", "value"]
    if "withheld" not in names:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pq.read_table(explanations, columns=columns, filters=[("withheld", "==", True)])


def would_be_reasons(rows: pa.Table, id_column: str) -> pa.Table:
    """The withheld rows that would have been principal reasons, as ``protected.parquet`` holds them."""
    reasons = rows.filter(pc.equal(rows.column("role"), "reason"))
    table = pa.table({"id": reasons.column(id_column).cast(pa.string()),
                      **{name: reasons.column(name).cast(kind) for name, kind in PROTECTED_SCHEMA_FIELDS}})
    return table.sort_by([("feature", "ascending"), ("id", "ascending")])


def protected_figures(rows: pa.Table, config: Config) -> dict[str, Any]:
    """Per protected feature, from the withheld rows: the decisions where it would have been a principal reason
    (``reason_decisions``, each one in review), its mean weight there (the contrast it was given; None when it
    never ranked), and the decisions whose letter omits it in any role (``omitted_decisions``). JSON-ready."""
    id_column = config.data.id_column
    ids = [str(v) for v in rows.column(id_column).to_pylist()]
    features = rows.column("feature").to_pylist()
    roles = rows.column("role").to_pylist()
    weights = rows.column("weight").to_pylist()
    out = []
    for feature in protected_features(config):
        mine = [i for i, f in enumerate(features) if f == feature.name]
        reasons = [i for i in mine if roles[i] == "reason"]
        mean = sum(weights[i] for i in reasons) / len(reasons) if reasons else None
        out.append({
            "feature": feature.name,
            "label": feature.label,
            "rule": "age" if feature.protected == "age" else "prohibited",
            **({"age_threshold": feature.age_limit} if feature.protected == "age" else {}),
            "reason_decisions": len({ids[i] for i in reasons}),
            "mean_weight": None if mean is None else round(float(mean), 6),
            "omitted_decisions": len({ids[i] for i in mine}),
        })
    in_review = {ids[i] for i, role in enumerate(roles) if role == "reason"}
    return {"features": out, "review_decisions": len(in_review), "file": PROTECTED_FILE}


def write_protected(explanations: str | Path, config: Config, target: Path) -> tuple[dict[str, Any], int]:
    """Write ``protected.parquet`` (atomically) and return the run's figures (:func:`protected_figures`) and the
    file's rows. Only for a run with protected features."""
    from tasks.io import write_table_atomic

    rows = read_withheld(explanations, config.data.id_column)
    table = would_be_reasons(rows, config.data.id_column)
    write_table_atomic(table, target)
    return protected_figures(rows, config), table.num_rows
