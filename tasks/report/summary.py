"""The run summary PDF: counts, fidelity histogram, reason frequencies, review list, parameters and hashes.

Called through :func:`tasks.report.render.render_run_summary`. One document per run, so clarity beats speed here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import InputError
from tasks.explain.aggregate import REVIEW_REASONS, quality_summary, review_reason_counts
from tasks.inputs.config import MATCHED_METHODS, Config, stream_samples
from tasks.inputs.protected import review_gates
from tasks.report.drift_page import drift_context
from tasks.report.pdf import PdfPart, PdfSettings, document_kind, require_fonts, write
from tasks.report.pdf import layout as lay_out
from tasks.report.pdf_structure import crlf_before_endstream
from tasks.report.protected_section import figures_from_frame, protected_context
from tasks.report.summary_lists import ACCESSIBLE_LAYOUT, failures_section, review_section
from tasks.report.summary_stats import decision_codes, distinct_per_group, first_rows
from tasks.report.text import (
    audit_rows,
    clean_text,
    fidelity_text,
    fill,
    load_reason_catalog,
    load_texts,
    threshold_text,
    versions_line,
    w3c_utc,
)
from tasks.run.info import RunInfo

COUNT_KEYS = ("decisions_in", "reports_made", "needs_review", "failed")


def summary_counts(counts: dict[str, Any]) -> dict[str, int]:
    """The counts the run summary shows (its fixed keys) out of a run's or a manifest's counts: the flow and
    ``limelight rerender`` pick them here alike, so a re-rendered summary has the run's bytes."""
    return {key: int(counts[key]) for key in COUNT_KEYS}
SUMMARY_SCHEMA = "limelight.run-summary/1"
_BINS = 10


def _fidelity_histogram(fidelity: np.ndarray, min_fidelity: float) -> dict[str, Any]:
    """Ten bands of width 0.1 over [0, 1] (negative R² counts in the first); SVG geometry as numbers."""
    clipped = np.clip(fidelity, 0.0, 1.0)
    index = np.minimum((clipped * _BINS).astype(int), _BINS - 1)
    counts = np.bincount(index, minlength=_BINS).tolist() if len(index) else [0] * _BINS
    width, height, left, bottom, top = 480, 150, 34, 22, 14
    plot_w, plot_h = width - left - 8, height - bottom - top
    biggest = max(counts) or 1
    step = plot_w / _BINS
    bars = []
    for i, count in enumerate(counts):
        h = count / biggest * plot_h
        bars.append({
            "x": f"{left + i * step + 2:.2f}", "y": f"{top + plot_h - h:.2f}", "width": f"{step - 4:.2f}",
            "height": f"{h:.2f}", "count": count, "cx": f"{left + i * step + step / 2:.2f}",
            "cy": f"{top + plot_h - h - 3:.2f}", "below": (i + 1) / _BINS <= min_fidelity + 1e-12,
        })
    ticks = [{"x": f"{left + i * step:.2f}", "label": f"{i / _BINS:.1f}"} for i in range(_BINS + 1)]
    threshold_x = left + min(max(min_fidelity, 0.0), 1.0) * plot_w
    bands = [f"{i / _BINS:.1f}–{(i + 1) / _BINS:.1f}" for i in range(_BINS)]
    return {
        "width": width, "height": height, "bars": bars, "ticks": ticks, "axis_y": f"{top + plot_h:.2f}",
        "label_y": f"{top + plot_h + 13:.2f}", "left": left, "right": f"{left + plot_w:.2f}",
        "threshold_x": f"{threshold_x:.2f}", "top": top, "counts": counts, "bands": bands,
    }


def _reason_frequencies(explanations: pd.DataFrame, config: Config, id_column: str,
                        codes: np.ndarray) -> list[dict[str, Any]]:
    """Decisions per factor and direction, and as first reason (``codes``: :func:`decision_codes` of the rows)."""
    catalog = load_reason_catalog(config)
    labels = {f.name: f.label for f in config.features}
    if explanations.empty:
        return []
    ids = explanations[id_column]
    valid = np.array(ids.notna(), dtype=bool)
    if "role" in explanations.columns:  # the factors in an applicant's favour are not reasons
        valid &= (explanations["role"] != "favourable").fillna(True).to_numpy(dtype=bool)
    if "withheld" in explanations.columns:  # nor a protected feature: the "Prohibited bases" section has those
        valid &= ~explanations["withheld"].fillna(False).astype(bool).to_numpy(dtype=bool)
    factored = pd.factorize(explanations["feature"])  # once: hashing three million strings costs a second
    (features, directions), counts = distinct_per_group(codes, [factored, pd.factorize(explanations["direction"])],
                                                        valid)
    table: dict[Any, dict[str, int]] = {}
    for feature, direction, count in zip(features, directions, counts, strict=True):
        table.setdefault(feature, {})[str(direction)] = int(count)
    (first_features,), first_counts = distinct_per_group(
        codes, [factored], valid & (explanations["rank"] == 1).to_numpy(dtype=bool))
    first = dict(zip(first_features, first_counts.tolist(), strict=True))
    rows = []
    for feature, row in table.items():
        entry = catalog.features.get(str(feature))
        raises, lowers = int(row.get("raises", 0)), int(row.get("lowers", 0))
        rows.append({
            "feature": str(feature),
            "label": clean_text(entry.label if entry and entry.label else labels.get(str(feature), feature), 120),
            "raises": raises, "lowers": lowers, "total": raises + lowers, "first": int(first.get(feature, 0)),
        })
    rows.sort(key=lambda r: (-r["total"], r["feature"]))
    width = 200
    biggest = max((r["total"] for r in rows), default=0) or 1
    for r in rows:
        r["w_raises"] = f"{r['raises'] / biggest * width:.2f}"
        r["x_lowers"] = r["w_raises"]
        r["w_lowers"] = f"{r['lowers'] / biggest * width:.2f}"
    return rows


def _quality_lines(explanations: pd.DataFrame, q: Mapping[str, Any] | None, ts: Mapping[str, str],
                   target: float) -> list[str]:
    """Stability and deletion check in words, from the run's :func:`quality_summary` ``q`` (nothing for tables
    without those columns: ``q`` None); the review gates are the gating table's."""
    if q is None:
        return []
    total = f"{q['decisions']:,}"
    firsts = explanations[explanations["rank"] == 1] if "rank" in explanations.columns else explanations
    lines = []
    if q["stable_share"] is not None:
        stable = int(firsts["stable"].dropna().astype(bool).sum())
        samples = f"{q['samples_mean']:,.0f}" if q["samples_mean"] is not None else "—"
        lines.append(fill(ts["quality_stability"], stable=f"{stable:,}", total=total, samples=samples))
    if q["deletion_holds_share"] is not None:
        holds = int(firsts["deletion_holds"].dropna().astype(bool).sum())
        lines.append(fill(ts["quality_deletion"], holds=f"{holds:,}", total=total))
    if q["kernel_widths"]:
        items = "; ".join(f"{w} × √d: {count:,}" for w, count in q["kernel_widths"].items())
        lines.append(fill(ts["quality_widths"], items=items, target=threshold_text(target)))
    return lines


def sample_rounds(config: Config) -> list[int]:
    """Samples per decision after each adaptation round (all R streams of S/R): S, 2·S, … up to the cap; S
    alone when there is one stream (no stability check, no adaptation)."""
    e = config.explain
    first = stream_samples(e.num_samples, e.stability_runs) * e.stability_runs
    if e.stability_runs == 1 or not e.adaptive:
        return [first]
    return [first * 2**a for a in range(int(math.log2(e.max_samples_factor)) + 1)]


def _samples_chart(firsts: pd.DataFrame, config: Config, ts: Mapping[str, str]) -> dict[str, Any] | None:
    """Decisions per sample count (one bar per adaptation round), stacked stable / not stable / not measured;
    None when the table has no ``num_samples``."""
    if "num_samples" not in firsts.columns:
        return None
    samples = pd.to_numeric(firsts["num_samples"], errors="coerce")
    known = samples.notna()
    if not known.any():
        return None
    stable = firsts["stable"] if "stable" in firsts.columns else pd.Series([None] * len(firsts), index=firsts.index)
    missing = stable.isna().to_numpy()
    status = np.where(missing, 2, np.where(stable.where(~missing, False).astype(bool).to_numpy(), 0, 1))
    names = ("stable", "unstable", "none")
    table: dict[int, dict[str, int]] = {n: {"stable": 0, "unstable": 0, "none": 0} for n in sample_rounds(config)}
    numbers = samples[known].astype(np.int64).to_numpy()
    pairs, counts = np.unique(numbers * 3 + status[known.to_numpy()], return_counts=True)  # per (samples, status)
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        table.setdefault(pair // 3, {"stable": 0, "unstable": 0, "none": 0})[names[pair % 3]] += count
    base = sample_rounds(config)[0]
    width, height, left, bottom, top = 300, 150, 34, 30, 14
    plot_w, plot_h = width - left - 8, height - bottom - top
    values = sorted(table)
    biggest = max(sum(c.values()) for c in table.values()) or 1
    step = plot_w / len(values)
    bar_w = min(step - 6, 48)
    bars, items = [], []
    for i, n in enumerate(values):
        c = table[n]
        cx = left + i * step + step / 2
        y = top + plot_h
        segments = []
        for key, colour in (("stable", "#1d3557"), ("unstable", "#b5452b"), ("none", "#8d99ae")):
            h = c[key] / biggest * plot_h
            if c[key]:
                y -= h
                segments.append({"y": f"{y:.2f}", "height": f"{h:.2f}", "fill": colour})
        factor = n / base if base else 0
        bars.append({"x": f"{cx - bar_w / 2:.2f}", "width": f"{bar_w:.2f}", "segments": segments,
                     "count": sum(c.values()), "cx": f"{cx:.2f}", "cy": f"{y - 3:.2f}", "label": f"{n:,}",
                     "factor": f"{factor:g}×" if factor else ""})
        items.append(fill(ts["samples_item"], samples=f"{n:,}", stable=f"{c['stable']:,}",
                          unstable=f"{c['unstable']:,}"))
    return {
        "width": width, "height": height, "bars": bars, "axis_y": f"{top + plot_h:.2f}", "left": left,
        "right": f"{left + plot_w:.2f}", "label_y": f"{top + plot_h + 11:.2f}", "factor_y": f"{top + plot_h + 21:.2f}",
        "alt": fill(ts["samples_alt"], items="; ".join(items)),
        "distribution": {str(n): dict(table[n]) for n in values},
        "unmeasured": any(c["none"] for c in table.values()),
    }


def _gates(firsts: pd.DataFrame, ts: Mapping[str, str], gates: tuple[str, ...] = REVIEW_REASONS
           ) -> list[dict[str, Any]]:
    """Decisions per review reason (a decision can fail several checks), with bar widths; [] without the column."""
    if "review_reasons" not in firsts.columns:
        return []
    counts = review_reason_counts(firsts["review_reasons"], gates)
    biggest = max(counts.values()) or 1
    return [{"reason": r, "label": ts["gate_" + r.replace("-", "_")], "count": f"{counts[r]:,}",
             "value": counts[r], "width": f"{counts[r] / biggest * 110:.2f}",
             "alt": fill(ts["gates_alt"], label=ts["gate_" + r.replace("-", "_")], count=f"{counts[r]:,}")}
            for r in gates]


def _split_reasons(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value):
        return []
    return [r for r in str(value).split(",") if r]


def _reasons_by_id(firsts: pd.DataFrame, id_column: str) -> dict[str, list[str]]:
    if "review_reasons" not in firsts.columns:
        return {}
    return {str(i): _split_reasons(v) for i, v in zip(firsts[id_column], firsts["review_reasons"], strict=True)}


def _review_list(per_decision: pd.DataFrame, firsts: pd.DataFrame, id_column: str, ids: list[str],
                 min_fidelity: float, ts: Mapping[str, str]) -> list[dict[str, str]]:
    """Layout 1's review list: ``ids`` (the first ``review_list_limit`` in the run's order) with fidelity and
    failed checks. Only their rows are looked up, so a large run costs no per-decision dictionaries."""
    wanted = set(ids)
    mine = per_decision[per_decision[id_column].astype(str).isin(wanted).to_numpy()]
    fid_by_id = dict(zip(mine[id_column].astype(str), mine["fidelity"], strict=True))
    reasons_by_id = _reasons_by_id(firsts[firsts[id_column].astype(str).isin(wanted).to_numpy()], id_column)
    return [{"id": clean_text(i, limit=120),
             "fidelity": fidelity_text(fid_by_id[str(i)], min_fidelity)
             if str(i) in fid_by_id and math.isfinite(fid_by_id[str(i)]) else "—",
             "reasons": ", ".join(ts.get("gate_" + r.replace("-", "_"), clean_text(r, 40))
                                  for r in reasons_by_id.get(str(i), []))}
            for i in ids]


def quality_settings_rows(config: Config, tc: Mapping[str, str], method: str) -> list[dict[str, str]]:
    """The run's explanation-quality settings ([explain] stability and adaptation, [review] gates) as (label,
    value) rows after :func:`tasks.report.text.audit_rows`, for the customer annex and the run summary.

    RunInfo does not carry them, so they come from the config; a re-render reads the run's own config (its
    SHA-256 is checked against the manifest), so the rows, like the rest of the page, are the same bytes. The
    method is the run's own (``RunInfo.method``): a config that leaves it to the default means the default of the
    version that made the run (per-bin now, kernel-matched before)."""
    e, r = config.explain, config.review
    yes, no = tc["yes"], tc["no"]
    adaptive = fill(tc["adaptive_value"], factor=str(e.max_samples_factor)) if e.adaptive else no
    matched = [
        {"label": tc["width_grid"], "value": ", ".join(f"{w:g}" for w in e.width_grid), "css": ""},
        {"label": tc["target_fidelity"], "value": threshold_text(e.target_fidelity), "css": ""},
        {"label": tc["min_effective_share"], "value": threshold_text(e.min_effective_share), "css": ""},
        {"label": tc["min_contrasts"], "value": f"{e.min_contrasts:,}", "css": ""},
        *([{"label": tc["target"], "value": tc["target_" + e.target.replace("-", "_")], "css": ""}]
          if method == "per-bin" else []),
    ] if method in MATCHED_METHODS else []
    return [
        *matched,
        {"label": tc["design"], "value": tc[f"design_{e.design}"], "css": ""},
        {"label": tc["stability_runs"], "value": str(e.stability_runs), "css": ""},
        {"label": tc["adaptive"], "value": adaptive, "css": ""},
        {"label": tc["confidence"], "value": threshold_text(e.confidence), "css": ""},
        {"label": tc["max_prediction_gap"], "value": threshold_text(r.max_prediction_gap), "css": ""},
        *([{"label": tc["require_width"], "value": yes if r.require_width else no, "css": ""}] if matched else []),
        {"label": tc["require_stable"], "value": yes if r.require_stable else no, "css": ""},
        {"label": tc["require_deletion"], "value": yes if r.require_deletion else no, "css": ""},
    ]


def quality_settings(config: Config, method: str) -> dict[str, Any]:
    """The same settings for the JSON attachment (``method``: the run's own, as for the rows)."""
    e, r = config.explain, config.review
    return {"method": method if e.engine == "batched" else e.method, "width_grid": list(e.width_grid),
            "target_fidelity": e.target_fidelity,
            "min_effective_share": e.min_effective_share, "min_contrasts": e.min_contrasts, "design": e.design,
            "stability_runs": e.stability_runs,
            "adaptive": e.adaptive,
            "max_samples_factor": e.max_samples_factor, "confidence": e.confidence, "min_fidelity": r.min_fidelity,
            "max_prediction_gap": r.max_prediction_gap, "require_width": r.require_width,
            "require_stable": r.require_stable,
            "require_deletion": r.require_deletion,
            **({"target": e.target} if method == "per-bin" else {})}  # older runs keep their bytes


def summary_document(explanations: pd.DataFrame, counts: Mapping[str, int], review_ids: list[str],
                     config: Config, run: RunInfo, out_path: Path, quality: Mapping[str, Any] | None = None,
                     layout: int = 1, failures: Path | None = None,
                     protected: Mapping[str, Any] | None = None, drift: Mapping[str, Any] | None = None) -> Path:
    """The run summary PDF at ``out_path``. ``quality``: the table's :func:`quality_summary` when the caller has it
    already (computed here otherwise). ``layout`` 2 and 3 (tasks/report/summary_lists.py; 3 claims PDF/UA-1 too)
    list the most severe review decisions and the first of the run's ``failures`` (its failures.parquet) as short
    tables, whatever the run's size; ``review_ids`` are then only used for a table without the ``needs_review``
    column. Layout 1 is the summary of runs recorded before it (the review list up to ``review_list_limit`` ids,
    every id attached).
    ``protected``: the run's protected-feature figures, like ``quality`` (only in runs with protected features:
    tasks/report/protected_section.py). ``drift``: the run's comparison with its baseline (the manifest's
    ``drift``): a drift section, and ``drift`` in the JSON attachment; none without one (older runs' bytes)."""
    id_column = config.data.id_column
    needed = [id_column, "rank", "feature", "direction", "fidelity"]
    missing = [c for c in needed if c not in explanations.columns]
    if missing:
        raise InputError(f"explanations: missing column(s) {', '.join(repr(c) for c in missing)}")
    if "review_reasons" not in explanations.columns:  # a table without the quality columns
        quality = None
    elif quality is None:
        quality = quality_summary(explanations, review_gates(config, REVIEW_REASONS))
    if protected is None:
        protected = figures_from_frame(explanations, config)
    absent = [k for k in COUNT_KEYS if k not in counts]
    if absent:
        raise InputError(f"run summary counts: missing {', '.join(absent)} (expected {', '.join(COUNT_KEYS)})")
    require_fonts(config.report.language)
    texts = load_texts(config.report.language)
    ts, tc = texts["summary"], texts["customer"]
    outcome_noun = texts.get("outcomes", {}).get(config.model.explain, {}).get("noun", config.model.explain)
    codes = decision_codes(explanations[id_column])
    per_decision = explanations[[id_column, "fidelity"]].iloc[first_rows(codes)]  # drop_duplicates(id), cheaper
    fidelity = per_decision["fidelity"].to_numpy(dtype=float)
    fidelity = fidelity[np.isfinite(fidelity)]
    histogram = _fidelity_histogram(fidelity, run.min_fidelity)
    reasons = _reason_frequencies(explanations, config, id_column, codes)
    for r in reasons:
        r["alt"] = fill(ts["reasons_alt"], label=r["label"], raises=r["raises"], lowers=r["lowers"])
    per_factor = ("role", "feature", "direction")  # not read from the first rows: copying them costs seconds at 1M
    firsts = explanations.loc[(explanations["rank"] == 1).to_numpy(dtype=bool),
                              [c for c in explanations.columns if c not in per_factor]]
    limit = config.report.review_list_limit
    lists = None if layout == 1 else {
        "review": review_section(firsts, id_column, review_ids, limit, run.min_fidelity, texts),
        "failures": failures_section(failures, id_column, limit, texts)}
    shown = [] if lists else _review_list(per_decision, firsts, id_column, review_ids[:limit], run.min_fidelity, ts)
    samples = _samples_chart(firsts, config, ts)
    gates = _gates(firsts, ts, review_gates(config, REVIEW_REASONS))
    min_fid = threshold_text(run.min_fidelity)
    below = int((fidelity < run.min_fidelity).sum())
    lender = config.report.lender
    count_rows = [{"label": ts.get(k, k.replace("_", " ").capitalize()), "value": f"{int(counts[k]):,}"}
                  for k in [*COUNT_KEYS, *sorted(set(counts) - set(COUNT_KEYS))]]
    context = {
        "lang": config.report.language,
        "t": texts,
        "title": ts["title"],
        "lender": clean_text(lender.name, limit=200),
        "run_id": clean_text(run.run_id, limit=200),
        "generated_at": w3c_utc(run.generated_at)[0],
        "counts": count_rows,
        "histogram": histogram,
        "fidelity_intro": fill(ts["fidelity_intro"], min=min_fid),
        "fidelity_alt": fill(ts["fidelity_alt"], min=min_fid, items="; ".join(
            f"{b} {c}" for b, c in zip(histogram["bands"], histogram["counts"], strict=True))),
        "fidelity_stats": fill(ts["fidelity_stats"], median=f"{np.median(fidelity):.2f}" if len(fidelity) else "—",
                               lowest=f"{fidelity.min():.2f}" if len(fidelity) else "—", below=f"{below:,}",
                               total=f"{len(fidelity):,}"),
        "reasons": reasons,
        "reasons_key": fill(ts["reasons_key"], outcome=outcome_noun),
        "col_raises": fill(ts["col_raises"], outcome=outcome_noun),
        "col_lowers": fill(ts["col_lowers"], outcome=outcome_noun),
        "review_intro": fill(ts["review_intro"], min=min_fid),
        "review": shown,
        "review_more": fill(ts["review_more"], count=f"{len(review_ids) - len(shown):,}")
        if not lists and len(review_ids) > len(shown) else None,
        "lists": lists,
        "quality": _quality_lines(firsts, quality, ts, config.explain.target_fidelity),
        "samples": samples,
        "gates": gates,
        "gates_note": fill(ts["gates_note"], count=f"{int(firsts['needs_review'].astype(bool).sum()):,}")
        if gates and "needs_review" in firsts.columns else None,
        "params": [*audit_rows(run, tc), *quality_settings_rows(config, tc, run.method)],
        "versions": versions_line(run),
        "protected": protected_context(protected, ts),
        "drift": drift_context(drift, config, ts),
    }
    kind = document_kind("run_summary", "summary.html")
    html = kind.template.render(**context)
    settings = PdfSettings(variant=config.report.pdf_variant, tags=config.report.pdf_tags,
                           lang=config.report.language, generated_at=run.generated_at,
                           accessible=layout >= ACCESSIBLE_LAYOUT)
    attachment = {
        "schema": SUMMARY_SCHEMA,
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "fidelity_histogram": dict(zip(histogram["bands"], histogram["counts"], strict=True)),
        "reason_frequency": [{k: r[k] for k in ("feature", "raises", "lowers", "total", "first")} for r in reasons],
        **({"review_ids": [str(i) for i in review_ids]} if lists is None else {
            "layout": layout, "review": lists["review"]["record"], "failures": lists["failures"]["record"]}),
        "quality": quality,
        "quality_settings": quality_settings(config, run.method),
        "samples_per_decision": samples["distribution"] if samples else None,
        "run": {k: v for k, v in sorted(run.to_dict().items())},
        **({"protected": dict(protected)} if protected else {}),  # runs with protected features only
        **({"drift": dict(drift)} if drift else {}),
    }
    part = PdfPart(
        title=f"{ts['title']} – {context['run_id']}",
        author=context["lender"],
        subject=ts["title"],
        attachment=json.dumps(attachment, sort_keys=True, ensure_ascii=False, indent=1).encode("utf-8"),
        attachment_name="run-summary.json",
        attachment_description="Run summary (limelight, JSON)",
    )
    pdf = crlf_before_endstream(write(lay_out(kind, html, settings), part, settings, kind))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_bytes(pdf)
    tmp.replace(out_path)
    return out_path

