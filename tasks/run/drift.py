"""Reason drift night over night: a run's profile, its baseline, and the comparison of the two.

- :func:`run_profile` reads a run's ``explanations.parquet`` (a few columns, one row group at a time) into its
  *profile*: decisions, declines, decisions in review, how many declines name each feature among their
  principal reasons, and the fidelity distribution (50 bins over [0, 1] and three quantiles). A profile is O(1) in
  the number of decisions; every manifest records its run's (``drift_profile``), so the next night reads it there.
- :func:`find_baseline` finds the previous published run of the same config under the output root;
  :func:`baseline_profile` reads its profile (from its manifest, else from its Parquet).
- :func:`compare` puts two profiles side by side: a population stability index (PSI) per feature over the share of
  declines naming it, the review share, the decline rate, the fidelity distribution (PSI over ten bands,
  Kolmogorov-Smirnov distance, quantiles); each against the ``[drift]`` thresholds, with one warning line per shift
  beyond them. Pure functions, no I/O.

docs/drift.md explains the figures and the thresholds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError
from tasks.inputs.drift_config import DriftConfig
from tasks.io import file_sha256, release_unused_memory

PROFILE_VERSION = 1
FIDELITY_BINS = 50  # of width 0.02 over [0, 1]; the PSI groups them into the summary's ten bands
PSI_BANDS = 10
QUANTILES = (0.1, 0.5, 0.9)
MANIFEST = "manifest.json"
EXPLANATIONS = "explanations.parquet"
_COLUMNS = ("rank", "role", "feature", "fidelity", "needs_review")
#: Rows read at a time for the profile: what the flow process holds of the table, whatever the run's size.
PROFILE_BATCH_ROWS = 16_384


# ---------------------------------------------------------------------------------------------- statistics


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or shares over the same cells):
    Σ (a − e) · ln(a / e) over the cells' shares, an empty cell counting as ``epsilon``."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.shape != a.shape or not len(e) or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi: two non-empty distributions over the same cells")
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def share_psi(expected_share: float, actual_share: float, epsilon: float = 1e-4) -> float:
    """PSI of one share (a feature named by that share of the declines) over its two cells: named, not named."""
    return psi([expected_share, 1.0 - expected_share], [actual_share, 1.0 - actual_share], epsilon)


def ks_distance(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Kolmogorov-Smirnov distance of two binned distributions: the largest gap of their cumulative shares."""
    e = np.cumsum(np.asarray(expected, dtype=float))
    a = np.cumsum(np.asarray(actual, dtype=float))
    if not len(e) or e[-1] <= 0 or a[-1] <= 0:
        return 0.0
    return float(np.max(np.abs(e / e[-1] - a / a[-1])))


def status(value: float, watch: float, act: float) -> str:
    """'act' (a warning), 'watch' (shown) or 'stable'."""
    return "act" if value >= act else "watch" if value >= watch else "stable"


# ---------------------------------------------------------------------------------------------- a run's profile


def fidelity_bins(values: np.ndarray) -> np.ndarray:
    """Counts in :data:`FIDELITY_BINS` bins over [0, 1]; a negative R² counts in the first, NaN nowhere."""
    values = values[np.isfinite(values)]
    index = np.minimum((np.clip(values, 0.0, 1.0) * FIDELITY_BINS).astype(int), FIDELITY_BINS - 1)
    return np.bincount(index, minlength=FIDELITY_BINS)


def run_profile(explanations: str | Path) -> dict[str, Any]:
    """The run's profile from its ``explanations.parquet`` (JSON-ready, O(1) in the number of decisions).

    A decline is a decision with principal reasons or favourable factors (``role``); its reasons are its rows of
    role ``reason``. A table without ``role`` (a run made before roles) has no declines nor reasons: None."""
    source = pq.ParquetFile(explanations)
    names = source.schema_arrow.names
    columns = [names[0], *(c for c in _COLUMNS if c in names)]  # the id column first (the output contract)
    has_role = "role" in names
    decisions = declines = review = 0
    reasons: Counter[str] = Counter()
    fidelity: list[np.ndarray] = []
    for batch in source.iter_batches(columns=columns, batch_size=PROFILE_BATCH_ROWS, use_threads=False):
        firsts = batch.filter(pc.equal(batch.column("rank"), 1))
        decisions += firsts.num_rows
        if "needs_review" in columns:
            review += int(pc.sum(pc.fill_null(firsts.column("needs_review"), False)).as_py() or 0)
        fidelity.append(firsts.column("fidelity").to_numpy(zero_copy_only=False).astype(float))
        if has_role:
            roles = firsts.column("role")
            declines += int(pc.sum(pc.is_in(roles, value_set=_adverse_roles())).as_py() or 0)
            reasons.update(_reason_counts(batch.filter(pc.equal(batch.column("role"), "reason")), names[0]))
        release_unused_memory()  # the batch's pages: the flow process goes on to render the summary
    values = np.concatenate(fidelity) if fidelity else np.zeros(0)
    finite = values[np.isfinite(values)]
    return {
        "version": PROFILE_VERSION,
        "decisions": decisions,
        "declines": declines if has_role else None,
        "review": review,
        "reasons": dict(sorted(reasons.items())) if has_role else None,
        "fidelity_bins": fidelity_bins(values).tolist(),
        "fidelity_quantiles": {f"p{round(q * 100)}": round(float(np.quantile(finite, q)), 4) if len(finite) else None
                               for q in QUANTILES},
    }


def _reason_counts(named: pa.RecordBatch, id_column: str) -> dict[str, int]:
    """Decisions per reason feature in ``named`` (rows of role ``reason``), each decision's feature once: counted
    in Arrow, with no Python object per row (the flow process kept tens of MB of them at 20,000 decisions). The
    pairs are told apart as ``id US feature``; the feature is what follows the last separator (an id may hold
    any text, a feature name not a control character)."""
    pairs = pc.unique(pc.binary_join_element_wise(named.column(id_column).cast(pa.large_string()),
                                                  named.column("feature").cast(pa.large_string()),
                                                  pa.scalar("\x1f", pa.large_string())))
    counted = pc.value_counts(pc.replace_substring_regex(pc.drop_null(pairs), "(?s)^.*\x1f", "")).flatten()
    return dict(zip(*(c.to_pylist() for c in counted), strict=True))


def _adverse_roles() -> Any:
    return pa.array(["reason", "favourable"], pa.string())


# ---------------------------------------------------------------------------------------------- the baseline


def output_root(out: str) -> tuple[Path, int]:
    """Where a run's siblings are published and how deep below it: ``out/nightly/{date}`` -> (``out/nightly``, 1),
    ``runs/{date}/{run_id}`` -> (``runs``, 2); a plain folder's siblings are its parent's folders (depth 1)."""
    parts = Path(out).expanduser().parts
    first = next((i for i, part in enumerate(parts) if "{" in part), None)
    if first is None:
        return Path(out).expanduser().absolute().parent, 1
    return Path(*parts[:first]).absolute() if first else Path.cwd(), len(parts) - first


def _same_config(manifest: Mapping[str, Any], config_path: Path | None) -> bool:
    recorded = (manifest.get("config") or {}).get("path")
    return bool(recorded and config_path and Path(recorded).resolve() == Path(config_path).resolve())


def find_baseline(out: str, current: Path, config_path: Path | None, started_at: str,
                  run_date: str | None) -> Path | None:
    """The manifest of the previous published run of the same config (its ``config.path``) under the output root
    of ``out`` (the ``--out`` given, placeholders kept): the latest night before ``run_date`` where both have one,
    else the latest finished before ``started_at``; None when there is none. ``current`` (this run's folder) is
    never its own baseline. An unreadable manifest is passed over."""
    root, depth = output_root(out)
    if not root.is_dir():
        return None
    current = Path(current).resolve()
    best: tuple[tuple[str, str], Path] | None = None
    for path in root.glob("/".join(["*"] * depth) + "/" + MANIFEST):
        if path.parent.resolve() == current:
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or not _same_config(manifest, config_path):
            continue
        night = str((manifest.get("trigger") or {}).get("run_date") or "")
        finished = str(manifest.get("finished_at") or "")
        earlier = night < run_date if (night and run_date) else bool(finished) and finished < started_at
        if earlier and (best is None or (night, finished) > best[0]):
            best = ((night, finished), path)
    return None if best is None else best[1]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A baseline's manifest; one line naming the file when it is not a limelight manifest (``--baseline``)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--baseline {path}: not found") from None
    except (OSError, ValueError) as error:
        raise InputError(f"--baseline {path}: not a readable JSON manifest ({error})") from None
    if not isinstance(manifest, dict) or "run_id" not in manifest:
        raise InputError(f"--baseline {path}: not a limelight manifest (no run_id)")
    return manifest


def baseline_profile(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The baseline's manifest and profile: its manifest's ``drift_profile``, else its ``explanations.parquet``
    read beside it (its SHA-256 checked against the manifest). One :class:`InputError` line when neither can be."""
    path = Path(path)
    manifest = read_manifest(path)
    profile = manifest.get("drift_profile")
    if isinstance(profile, dict) and profile.get("version") == PROFILE_VERSION:
        return manifest, profile
    table = path.parent / EXPLANATIONS
    expected = ((manifest.get("outputs") or {}).get(EXPLANATIONS) or {}).get("sha256")
    if not table.is_file():
        raise InputError(f"{table}: the baseline's explanations are missing")
    if expected and file_sha256(table) != expected:
        raise InputError(f"{table}: SHA-256 changed since the baseline run (its manifest has {expected[:16]}…)")
    return manifest, run_profile(table)


def baseline_record(manifest: Mapping[str, Any], path: Path, how: str) -> dict[str, Any]:
    """Which run the comparison is against (for the manifest and the page)."""
    return {"run_id": manifest.get("run_id"), "manifest": str(path), "found": how,
            "run_date": (manifest.get("trigger") or {}).get("run_date"), "finished_at": manifest.get("finished_at")}


# ---------------------------------------------------------------------------------------------- the comparison


def _share(part: int | None, whole: int | None) -> float | None:
    return None if part is None or not whole else part / whole


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _reason_mix(base: Mapping[str, Any], now: Mapping[str, Any], t: DriftConfig, enough: bool,
                labels: Mapping[str, str]) -> tuple[list[dict[str, Any]], float | None, list[str]]:
    """Per feature: the share of declines naming it tonight and at the baseline, its PSI and status."""
    if base.get("reasons") is None or now.get("reasons") is None or not base["declines"] or not now["declines"]:
        return [], None, []
    rows, warnings = [], []
    for feature in sorted(set(base["reasons"]) | set(now["reasons"])):
        b = base["reasons"].get(feature, 0) / base["declines"]
        a = now["reasons"].get(feature, 0) / now["declines"]
        value = share_psi(b, a, t.epsilon)
        state = status(value, t.psi_watch, t.psi_act)
        rows.append({"feature": feature, "share": _round(a), "baseline_share": _round(b), "psi": _round(value),
                     "status": state})
        if state == "act" and enough:
            name = f"{labels[feature]} ({feature})" if labels.get(feature, feature) != feature else feature
            warnings.append(f"reason drift: {name} is a principal reason of "
                            f"{a:.0%} of declines, {b:.0%} at the baseline (PSI {value:.2f} ≥ {t.psi_act:g})")
    rows.sort(key=lambda r: (-r["psi"], r["feature"]))
    mix = psi([base["reasons"].get(f, 0) for f in sorted(set(base["reasons"]) | set(now["reasons"]))],
              [now["reasons"].get(f, 0) for f in sorted(set(base["reasons"]) | set(now["reasons"]))], t.epsilon) \
        if sum(base["reasons"].values()) and sum(now["reasons"].values()) else None
    return rows, _round(mix), warnings


def _fidelity(base: Mapping[str, Any], now: Mapping[str, Any], t: DriftConfig, enough: bool) -> tuple[dict, list]:
    b, a = np.asarray(base["fidelity_bins"]), np.asarray(now["fidelity_bins"])
    group = FIDELITY_BINS // PSI_BANDS
    if not b.sum() or not a.sum():
        return {"psi": None, "ks": None, "status": "stable", "quantiles": now["fidelity_quantiles"],
                "baseline_quantiles": base["fidelity_quantiles"]}, []
    value = psi(b.reshape(PSI_BANDS, group).sum(1), a.reshape(PSI_BANDS, group).sum(1), t.epsilon)
    state = status(value, t.psi_watch, t.psi_act)
    warnings = [f"fidelity drift: the distribution of fidelity moved (PSI {value:.2f} ≥ {t.psi_act:g}; median "
                f"{now['fidelity_quantiles']['p50']} against {base['fidelity_quantiles']['p50']})"] \
        if state == "act" and enough else []
    return {"psi": _round(value), "ks": _round(ks_distance(b, a)), "status": state,
            "quantiles": now["fidelity_quantiles"], "baseline_quantiles": base["fidelity_quantiles"]}, warnings


def _driver(base: Mapping[str, Any], now: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """The reason whose rate per 100 decisions moved most with the decline rate (the feature behind the change):
    its rise for more declines, its fall for fewer; '' without reasons."""
    if not base.get("reasons") or not now.get("reasons") or not base["decisions"] or not now["decisions"]:
        return ""
    sign = 1 if now["declines"] / now["decisions"] >= base["declines"] / base["decisions"] else -1
    moves = {f: 100 * (now["reasons"].get(f, 0) / now["decisions"] - base["reasons"].get(f, 0) / base["decisions"])
             for f in set(base["reasons"]) | set(now["reasons"])}
    feature = max(sorted(moves), key=lambda f: sign * moves[f])
    name = f"{labels[feature]} ({feature})" if labels.get(feature, feature) != feature else feature
    return f"; the reason that moved most: {name}, {moves[feature]:+.1f} declines naming it per 100 decisions"


def compare(base: Mapping[str, Any], now: Mapping[str, Any], thresholds: DriftConfig,
            labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Tonight's profile ``now`` against the baseline's ``base``: figures, statuses and warning lines (JSON-ready,
    O(features)). ``labels`` name features in the warnings. Fewer than ``min_decisions`` decisions (declines, for
    the reason mix) in either run: the figures, no warning."""
    t, labels = thresholds, labels or {}
    enough = min(base["decisions"], now["decisions"]) >= t.min_decisions
    enough_declines = min(base.get("declines") or 0, now.get("declines") or 0) >= t.min_decisions
    features, mix, warnings = _reason_mix(base, now, t, enough_declines, labels)
    review_b, review_a = _share(base["review"], base["decisions"]), _share(now["review"], now["decisions"])
    review_state = "stable"
    if review_a is not None and review_b is not None and review_a - review_b >= t.review_share_min_change and (
            review_b == 0 or review_a / review_b >= t.review_share_ratio):
        review_state = "act"
        if enough:
            warnings.append(f"review drift: {review_a:.1%} of decisions in review, {review_b:.1%} at the baseline "
                            f"(at least {t.review_share_ratio:g}× and {t.review_share_min_change:.0%} more)")
    decline_b, decline_a = _share(base.get("declines"), base["decisions"]), _share(now.get("declines"),
                                                                                  now["decisions"])
    decline_state = "stable"
    if decline_a is not None and decline_b is not None and abs(decline_a - decline_b) >= t.decline_rate_change:
        decline_state = "act"
        if enough:
            warnings.append(f"decline drift: {decline_a:.1%} of decisions declined, {decline_b:.1%} at the baseline "
                            f"(moved {t.decline_rate_change:.0%} or more){_driver(base, now, labels)}")
    fidelity, more = _fidelity(base, now, t, enough)
    return {
        "decisions": now["decisions"], "baseline_decisions": base["decisions"],
        "declines": now.get("declines"), "baseline_declines": base.get("declines"),
        "judged": {"decisions": enough, "reason_mix": enough_declines},
        "thresholds": t.model_dump(mode="json", exclude={"enabled"}),
        "reason_mix": {"psi": mix, "features": features},
        "review": {"share": _round(review_a), "baseline_share": _round(review_b),
                   "ratio": _round(review_a / review_b) if review_a is not None and review_b else None,
                   "status": review_state},
        "decline_rate": {"rate": _round(decline_a), "baseline_rate": _round(decline_b),
                         "change": _round(decline_a - decline_b) if decline_a is not None and decline_b is not None
                         else None, "status": decline_state},
        "fidelity": fidelity,
        "warnings": [*warnings, *more],
    }
