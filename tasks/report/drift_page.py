"""The run summary's drift section: the run's comparison with its baseline (tasks/run/drift.py), in words.

Built only from the comparison the manifest records (``manifest["drift"]``), so ``limelight rerender`` renders the
same section from the manifest alone; a run without a baseline has no section and its summary keeps its bytes. The
section's template is ``templates/run_summary/drift.html``; its texts are the ``drift_*`` keys of ``[summary]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.inputs.config import Config
from tasks.report.text import clean_text, fill, load_reason_catalog


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _points(a: float | None, b: float | None, ts: Mapping[str, str]) -> str:
    return "—" if a is None or b is None else fill(ts["drift_points"], value=f"{(a - b) * 100:+.1f}")


def _row(label: str, baseline: str, now: str, change: str, state: str | None, ts: Mapping[str, str]) -> dict:
    return {"label": label, "baseline": baseline, "now": now, "change": change,
            "status": ts[f"drift_status_{state}"] if state else "", "act": state == "act"}


def feature_labels(config: Config) -> dict[str, str]:
    """Feature name -> the label the letters use (the reason catalog's, else the config's)."""
    catalog = load_reason_catalog(config)
    labels = {}
    for f in config.features:
        entry = catalog.features.get(f.name)
        labels[f.name] = clean_text(entry.label if entry and entry.label else f.label or f.name, 120)
    return labels


def _measures(drift: Mapping[str, Any], ts: Mapping[str, str]) -> list[dict[str, Any]]:
    decline, review, fid = drift["decline_rate"], drift["review"], drift["fidelity"]
    q, bq = fid["quantiles"], fid["baseline_quantiles"]
    ratio = review["ratio"]
    rows = [
        _row(ts["drift_decline"], _percent(decline["baseline_rate"]), _percent(decline["rate"]),
             _points(decline["rate"], decline["baseline_rate"], ts), decline["status"]
             if decline["rate"] is not None else None, ts),
        _row(ts["drift_review"], _percent(review["baseline_share"]), _percent(review["share"]),
             f"×{ratio:.2f}" if ratio is not None else _points(review["share"], review["baseline_share"], ts),
             review["status"], ts),
        *[_row(ts[f"drift_fidelity_{k}"], _number(bq.get(k)), _number(q.get(k)), "", None, ts)
          for k in ("p10", "p50", "p90")],
        _row(fill(ts["drift_fidelity_psi"], ks=_number(fid["ks"])), "", _number(fid["psi"], 3), "",
             fid["status"] if fid["psi"] is not None else None, ts),
    ]
    if drift["reason_mix"]["psi"] is not None:
        rows.append(_row(ts["drift_mix"], "", _number(drift["reason_mix"]["psi"], 3), "", None, ts))
    return rows


def drift_context(drift: Mapping[str, Any] | None, config: Config, ts: Mapping[str, str]) -> dict[str, Any] | None:
    """What ``drift.html`` shows; None without a comparison (the summary then has no drift section)."""
    if not drift:
        return None
    base, t = drift["baseline"], drift["thresholds"]
    labels = feature_labels(config)
    night = fill(ts["drift_night"], date=clean_text(base["run_date"], 40)) if base.get("run_date") else ""
    declines = drift.get("baseline_declines")
    features = [
        {**_row(labels.get(r["feature"], clean_text(r["feature"], 120)), _percent(r["baseline_share"]),
                _percent(r["share"]), _points(r["share"], r["baseline_share"], ts), r["status"], ts),
         "psi": _number(r["psi"], 3)}
        for r in drift["reason_mix"]["features"]
    ]
    acts = sum(r["act"] for r in features) + sum(r["act"] for r in _measures(drift, ts))
    judged = drift["judged"]
    return {
        "intro": fill(ts["drift_intro"], run_id=clean_text(str(base["run_id"]), 120), night=night,
                      decisions=f"{drift['baseline_decisions']:,}",
                      declines=f"{declines:,}" if declines is not None else "—",
                      now_decisions=f"{drift['decisions']:,}",
                      now_declines=f"{drift['declines']:,}" if drift.get("declines") is not None else "—"),
        "thresholds": fill(ts["drift_thresholds"], watch=f"{t['psi_watch']:g}", act=f"{t['psi_act']:g}",
                           ratio=f"{t['review_share_ratio']:g}", change=f"{t['decline_rate_change'] * 100:g}"),
        "verdict": fill(ts["drift_verdict_act"], count=f"{len(drift['warnings']):,}") if drift["warnings"]
        else ts["drift_verdict_unjudged"] if acts and not (judged["decisions"] and judged["reason_mix"])
        else ts["drift_verdict_none"],
        "alert": bool(drift["warnings"]),
        "unjudged": fill(ts["drift_unjudged"], min=f"{t['min_decisions']:,}")
        if not (judged["decisions"] and judged["reason_mix"]) else None,
        "measures": _measures(drift, ts),
        "features": features,
    }
