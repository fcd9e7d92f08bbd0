"""From per-decision explanations to the public explanations table (one row per decision and rank)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.explain.protected import withheld
from tasks.inputs.config import Config, FeatureConfig
from tasks.inputs.protected import PROTECTED_GATE
from tasks.io import release_unused_memory

if TYPE_CHECKING:  # the engine imports torch; the flow process only needs the schema
    from tasks.engine import Explanations, ReferenceStats


def explanation_schema(id_column: str) -> pa.Schema:
    """The Arrow schema of ``explanations.parquet`` (a contract: docs/output-contract.md)."""
    return pa.schema(
        [
            (id_column, pa.string()),
            ("rank", pa.int32()),
            ("role", pa.string()),  # ROLES: reason (principal reason), favourable, factor (not adverse)
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
            ("review_reasons", pa.string()),  # ','-joined REVIEW_REASONS; '' when none
            ("stability", pa.float64()),  # share of stream pairs whose top-k set agrees (null: not measured)
            ("order_agrees", pa.bool_()),
            ("selection_z", pa.float64()),
            ("stable", pa.bool_()),
            ("num_samples", pa.int64()),
            ("prediction_gap", pa.float64()),  # |local_pred - model_pred|
            ("deletion_delta", pa.float64()),
            ("deletion_holds", pa.bool_()),
            ("kernel_width", pa.float64()),  # kernel-matched method: the decision's width (null: lime's method)
            ("kernel_width_sqrt_d", pa.float64()),  # the same in units of sqrt(number of features)
            ("effective_samples", pa.float64()),
            ("fidelity_widest", pa.float64()),  # held-out fidelity at the grid's widest width (lime's 0.75)
            ("tied", pa.bool_()),  # k + 1 principal reasons named: the last two weigh about the same (null: lime's)
            ("withheld", pa.bool_()),  # a protected feature the letter does not state (null: runs before it)
        ]
    )


ROLES = ("reason", "favourable", "factor")
"""A factor's role on the letter: a principal reason for the adverse outcome (it raised the explained class's
probability), a factor in the applicant's favour (it lowered it), or, for the other outcome, a main factor."""


def is_adverse(model_pred: float, config: Config) -> bool:
    """Whether a decision is in the explained (adverse) class: its probability reaches the decision threshold."""
    return bool(model_pred >= config.report.decision_threshold)


def factor_roles(features: np.ndarray, weights: np.ndarray, adverse: bool) -> list[tuple[int, float, str]]:
    """The factors a letter shows, in order, with their roles: for an adverse decision the factors that raised
    its probability (principal reasons, in the engine's order) then those that lowered it (favourable); for the
    other outcome every factor, in the engine's order. ``features`` -1: no factor in that slot."""
    shown = [(int(j), float(w)) for j, w in zip(features, weights, strict=True) if j >= 0]
    if not adverse:
        return [(j, w, "factor") for j, w in shown]
    return [(j, w, "reason") for j, w in shown if w > 0] + [(j, w, "favourable") for j, w in shown if w <= 0]


REVIEW_REASONS = ("low-fidelity", "no-width", "prediction-gap", "unstable", "deletion-fails")
"""Why a decision goes to human review ([review] in the config; docs/method.md, "Review gate")."""


def format_value(feature: FeatureConfig, value: float) -> str | None:
    """The decision's own value as a customer reads it: the category's text, or the number to its decimals;
    None for a missing value (the reports say "not provided")."""
    if np.isnan(value):
        return None
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
    """One row per (decision, factor shown), columns as :func:`explanation_schema`; ``rank`` counts the
    decision's factors in the order the letter shows them (principal reasons first)."""
    id_column = config.data.id_column
    reasons = review_reasons(expl, config)
    n = len(expl.ids)
    quality = {name: _optional(expl, name, n) for name in _QUALITY + _WIDTH}
    root = float(np.sqrt(stats.num_features))
    gap = np.abs(np.asarray(expl.local_pred) - np.asarray(expl.model_pred))
    rows: dict[str, list] = {name: [] for name in explanation_schema(id_column).names}
    for b, decision_id in enumerate(expl.ids):
        factors = factor_roles(expl.feature_index[b], expl.weights[b], is_adverse(expl.model_pred[b], config))
        hidden = [withheld(config.features[j], role, float(x[b, j])) for j, _, role in factors]
        if any(h and role == "reason" for h, (_, _, role) in zip(hidden, factors, strict=True)):
            reasons[b] = [*reasons[b], PROTECTED_GATE]
        share = _role_shares(factors, hidden)
        for rank, ((j, weight, role), hide) in enumerate(zip(factors, hidden, strict=True), start=1):
            feature = config.features[j]
            rows[id_column].append(decision_id)
            rows["rank"].append(rank)
            rows["role"].append(role)
            rows["feature"].append(feature.name)
            rows["label"].append(feature.label)
            rows["condition"].append(stats.features[j].condition(x[b, j]))
            rows["value"].append(format_value(feature, float(x[b, j])))
            rows["weight"].append(weight)
            rows["share"].append(share[rank - 1])
            rows["withheld"].append(hide)
            rows["direction"].append(direction_of(weight))
            rows["fidelity"].append(float(expl.fidelity[b]))
            rows["local_pred"].append(float(expl.local_pred[b]))
            rows["model_pred"].append(float(expl.model_pred[b]))
            rows["intercept"].append(float(expl.intercept[b]))
            rows["needs_review"].append(bool(reasons[b]))
            rows["review_reasons"].append(",".join(reasons[b]))
            for name in _QUALITY + _WIDTH:
                rows[name].append(quality[name][b])
            width = quality["kernel_width"][b]
            rows["kernel_width_sqrt_d"].append(None if width is None else round(width / root, 6))
            rows["prediction_gap"].append(float(gap[b]))
    return pa.Table.from_pydict(rows, schema=explanation_schema(id_column)).to_pandas()


def _role_shares(factors: list[tuple[int, float, str]], hidden: list[bool]) -> list[float]:
    """Each factor's share of its role's summed |weight|: a stated factor among the stated ones of its role (the
    letter's shares add up to 100%), a withheld one among all of its role (what the model gave it)."""
    out = []
    for (_, weight, role), hide in zip(factors, hidden, strict=True):
        pool = [abs(w) for (_, w, r), h in zip(factors, hidden, strict=True) if r == role and (hide or not h)]
        total = sum(pool)
        out.append(float(abs(weight) * 100.0 / total) if total > 0 else 0.0)
    return out


_QUALITY = ("stability", "order_agrees", "selection_z", "stable", "num_samples", "deletion_delta", "deletion_holds")
_WIDTH = ("kernel_width", "effective_samples", "fidelity_widest", "tied")


def _optional(expl: Explanations, name: str, n: int) -> list:
    """A quality array as Python values, or nulls where the engine did not compute it (e.g. ``engine = "lime"``
    has no streams)."""
    values = getattr(expl, name)
    if values is None:
        return [None] * n
    return np.asarray(values).tolist()


def review_reasons(expl: Explanations, config: Config) -> list[list[str]]:
    """Per decision, the gates it fails ([review]): fidelity below ``min_fidelity``, |local_pred - model_pred|
    above ``max_prediction_gap``, no kernel width of the kernel-matched grid reaching the target fidelity
    (``require_width``), a top-k not stable at the sample cap (``require_stable``), a failed deletion
    check (``require_deletion``). An empty list: no review needed."""
    review = config.review
    gap = np.abs(np.asarray(expl.local_pred) - np.asarray(expl.model_pred))
    out: list[list[str]] = []
    for b in range(len(expl.ids)):
        reasons = []
        if not expl.fidelity[b] >= review.min_fidelity:  # NaN fidelity fails too
            reasons.append("low-fidelity")
        if review.require_width and expl.width_found is not None and not expl.width_found[b]:
            reasons.append("no-width")
        if not gap[b] <= review.max_prediction_gap:
            reasons.append("prediction-gap")
        if review.require_stable and expl.stable is not None and not expl.stable[b]:
            reasons.append("unstable")
        if review.require_deletion and expl.deletion_holds is not None and not expl.deletion_holds[b]:
            reasons.append("deletion-fails")
        out.append(reasons)
    return out


def _share(values: pd.Series) -> float | None:
    values = values.dropna()
    return round(float(values.astype(bool).mean()), 6) if len(values) else None


def _quantiles(values: pd.Series) -> dict[str, float] | None:
    values = pd.to_numeric(values, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    if not len(values):
        return None
    points = np.quantile(values.to_numpy(dtype=float), [0.0, 0.1, 0.5, 0.9, 1.0])
    return {name: round(float(v), 6) for name, v in zip(("min", "p10", "median", "p90", "max"), points, strict=True)}


def _counts(values: pd.Series | None) -> dict[str, int]:
    """How many decisions took each value (e.g. each kernel width), as JSON-ready strings; {} when absent."""
    if values is None:
        return {}
    values = pd.to_numeric(values, errors="coerce").dropna()
    return {f"{float(k):g}": int(v) for k, v in values.value_counts().sort_index(ascending=False).items()}


def _reasons_per_adverse_decision(table: pd.DataFrame) -> dict[str, int]:
    """Adverse decisions by the number of principal reasons their letter names ({} without roles): fewer than k
    where fewer factors raised the decision's probability."""
    if "role" not in table.columns or not len(table):
        return {}
    id_column = table.columns[0]
    adverse = table.loc[table["role"].isin(["reason", "favourable"]).to_numpy(dtype=bool), [id_column, "role"]]
    codes = pd.factorize(adverse[id_column])[0]  # numbers, not a groupby on the ids: a million decisions is 3M rows
    known = codes >= 0
    reasons = (adverse["role"] == "reason").to_numpy(dtype=bool)[known]
    counts = pd.Series(np.bincount(codes[known], weights=reasons).astype(np.int64) if known.any() else [],
                       dtype="int64")
    return {str(n): int(c) for n, c in counts.value_counts().sort_index().items()}


SUMMARY_COLUMNS = ("rank", "role", "feature", "direction", "fidelity", "needs_review", "review_reasons", "stable",
                   "order_agrees", "stability", "selection_z", "num_samples", "prediction_gap", "deletion_holds",
                   "kernel_width_sqrt_d", "fidelity_widest", "tied", "withheld")
"""The columns of ``explanations.parquet`` the run summary and :func:`quality_summary` read (after the id)."""


def read_for_summary(path: str | Path) -> pd.DataFrame:
    """``explanations.parquet`` with the id column and :data:`SUMMARY_COLUMNS` only: the texts, values and weights
    of every factor (most of the file) are not read into memory for a run's figures."""
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[names[0], *(c for c in SUMMARY_COLUMNS if c in names)], use_threads=False)
    frame = table.to_pandas(self_destruct=True, split_blocks=True)  # each column's Arrow buffers freed as converted
    del table
    release_unused_memory()  # the flow process renders the summary next: its peak (docs/performance.md)
    return frame


def review_reason_counts(reasons: pd.Series, gates: Sequence[str] = REVIEW_REASONS) -> dict[str, int]:
    """Decisions per review gate (a decision can fail several), from the comma-separated ``review_reasons``:
    counted over the distinct values, which are few whatever the run's size, not decision by decision."""
    distinct = reasons.fillna("").astype(str).value_counts()
    return {reason: int(sum(n for value, n in distinct.items() if reason in value.split(",")))
            for reason in gates}


def quality_summary(table: pd.DataFrame, gates: Sequence[str] = REVIEW_REASONS) -> dict:
    """Explanation quality of a run, from the explanations table (one entry per decision counted once): for the
    manifest and the run summary. JSON-ready; ``None`` where a measure was not computed. ``gates``: the review
    gates counted (tasks.inputs.protected.review_gates: the protected-basis gate in runs that have it)."""
    if "rank" in table.columns:  # the per-factor text columns are not copied: seconds at a million decisions
        per_factor = {table.columns[0], "role", "feature", "direction"}
        firsts = table.loc[(table["rank"] == 1).to_numpy(dtype=bool), [c for c in table.columns if c not in per_factor]]
    else:
        firsts = table
    decisions = len(firsts)
    reasons = firsts["review_reasons"] if "review_reasons" in firsts else pd.Series([], dtype=str)
    counts = review_reason_counts(reasons, gates)
    samples = pd.to_numeric(firsts.get("num_samples", pd.Series([], dtype=float)), errors="coerce").dropna()
    return {
        "decisions": decisions,
        "stable_share": _share(firsts["stable"]) if "stable" in firsts else None,
        "order_agrees_share": _share(firsts["order_agrees"]) if "order_agrees" in firsts else None,
        "stability_mean": (round(float(firsts["stability"].dropna().mean()), 6)
                           if "stability" in firsts and firsts["stability"].notna().any() else None),
        "samples_mean": round(float(samples.mean()), 1) if len(samples) else None,
        "samples_distribution": {str(int(k)): int(v) for k, v in samples.value_counts().sort_index().items()},
        "fidelity": _quantiles(firsts["fidelity"]),
        "prediction_gap": _quantiles(firsts["prediction_gap"]) if "prediction_gap" in firsts else None,
        "selection_z": _quantiles(firsts["selection_z"]) if "selection_z" in firsts else None,
        "deletion_holds_share": _share(firsts["deletion_holds"]) if "deletion_holds" in firsts else None,
        "kernel_widths": _counts(firsts.get("kernel_width_sqrt_d")),
        "fidelity_widest": _quantiles(firsts["fidelity_widest"]) if "fidelity_widest" in firsts else None,
        "fidelity_at_least_0_5_share": _share(pd.to_numeric(firsts["fidelity"], errors="coerce").dropna() >= 0.5),
        "reasons_per_adverse_decision": _reasons_per_adverse_decision(table),
        **({"tied_share": _share(firsts["tied"])} if "tied" in firsts else {}),  # runs before ties: their bytes
        "needs_review": int(firsts["needs_review"].astype(bool).sum()),
        "review_reasons": counts,
    }
