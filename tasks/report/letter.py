"""The customer letter's content: each decision's explanation rows and applicant record made into the template
context of its report and the JSON document attached to it (schema ``limelight.explanation/1``).

The inputs are checked here (columns, ranks 1..n, finite numbers, known features and directions), so bad rows
raise :class:`InputError` before anything is rendered. Every fixed text comes from config/texts/<language>.toml,
every reason sentence from the reason catalog (tasks/report/text.py); what is returned is plain text or numbers,
which the templates autoescape. tasks/report/render.py makes the HTML and the PDFs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import InputError
from tasks.explain.aggregate import ROLES, is_adverse
from tasks.inputs.config import Config, FeatureConfig
from tasks.report.text import (
    Band,
    Notice,
    ReasonCatalog,
    clean_text,
    describe_band,
    display_value,
    fidelity_text,
    fill,
    load_notice,
    load_reason_catalog,
    load_texts,
    parse_band,
    threshold_text,
    w3c_utc,
)
from tasks.run.info import RunInfo

EXPLANATION_SCHEMA = "limelight.explanation/1"


# ---------------------------------------------------------------------------------------------- helpers


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _format_date(value: Any) -> str:
    """Decision dates as ISO 8601 (YYYY-MM-DD): unambiguous in every language."""
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.strftime("%Y-%m-%d")
    text = clean_text(value, limit=64)
    try:
        return pd.Timestamp(text).strftime("%Y-%m-%d")
    except (ValueError, TypeError):
        return text


def _pct(value: float, decimals: int = 1) -> str:
    return f"{value * 100:.{decimals}f}%"


def _fidelity_percent(fidelity: str) -> str:
    """The printed fidelity as a share of variation, as precise as the number printed (0.299 -> 29.9%)."""
    decimals = max(len(fidelity.partition(".")[2]) - 2, 0)
    return f"{max(float(fidelity), 0.0) * 100:.{decimals}f}%"


def _humanize(name: str) -> str:
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _in_sentence(label: str, language: str) -> str:
    """'Debt-to-income ratio' -> 'debt-to-income ratio' inside an English sentence (not 'DTI')."""
    if language == "en" and len(label) > 1 and label[0].isupper() and label[1].islower():
        return label[0].lower() + label[1:]
    return label


def _outcome(texts: Mapping[str, Any], cls: str) -> tuple[str, str]:
    entry = texts.get("outcomes", {}).get(cls, {})
    return clean_text(entry.get("label", cls)), clean_text(entry.get("noun", cls))


def _float(value: Any, column: str, decision_id: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"explanations: decision {decision_id[:80]!r}: column {column!r} is not a number "
                         f"({value!r})") from None
    if not math.isfinite(number):
        raise InputError(f"explanations: decision {decision_id[:80]!r}: column {column!r} is not finite")
    return number


# ---------------------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class RunTexts:
    """What every customer letter of one run shares: its config, facts, texts, reason catalog and notice."""

    config: Config
    run: RunInfo
    texts: Mapping[str, Any]
    catalog: ReasonCatalog
    notice: Notice
    features: Mapping[str, FeatureConfig]
    outcome_label: str
    outcome_noun: str
    title: str
    statement_date: str


def _factor(row: Mapping[str, Any], shared: RunTexts, decision_id: str) -> dict[str, Any]:
    language = shared.config.report.language
    texts = shared.texts
    name = str(row["feature"])
    feature = shared.features.get(name)
    if feature is None:
        raise InputError(f"explanations: decision {decision_id[:80]!r}: feature {name[:80]!r} is not in the "
                         "config's [[features]]")
    direction = str(row["direction"])
    if direction not in ("raises", "lowers"):
        raise InputError(f"explanations: decision {decision_id[:80]!r}: direction {direction[:20]!r} is not "
                         "'raises' or 'lowers'")
    entry = shared.catalog.features.get(name)
    label = clean_text(entry.label if entry is not None and entry.label else row["label"], limit=120)
    condition = clean_text(row["condition"], limit=300)
    missing = _is_missing(row["value"])
    if missing:  # the customer did not provide it: its own sentence, "not provided" as the value
        value = texts["customer"]["not_provided"]
        template = getattr(entry, f"{direction}_missing") if entry is not None else None
        sentence = (fill(template, value=value, label=label) if template is not None else
                    fill(texts["fallback"][f"{direction}_missing"], label=_in_sentence(label, language),
                         outcome=shared.outcome_noun))
        return _factor_fields(row, shared, decision_id, name, label, condition, value, None, sentence, direction)
    value = display_value(row["value"], feature, entry)
    band: Band | None = None
    if feature.kind == "numeric":
        band = parse_band(condition, (feature.name, feature.label, str(row["label"])))
    range_text = (describe_band(band, feature, texts["ranges"]) if band is not None
                  else fill(texts["ranges"]["raw"], condition=condition))
    template = getattr(entry, direction) if entry is not None else None
    if template is not None:
        sentence = fill(template, value=value, range=range_text, label=label)
    else:
        key = direction if feature.kind == "numeric" else f"{direction}_category"
        sentence = fill(texts["fallback"][key], label=_in_sentence(label, language), value=value,
                        range=range_text, outcome=shared.outcome_noun)
    return _factor_fields(row, shared, decision_id, name, label, condition, value, clean_text(row["value"], limit=200),
                          sentence, direction)


def _factor_fields(row: Mapping[str, Any], shared: RunTexts, decision_id: str, name: str, label: str, condition: str,
                   value: str, raw_value: str | None, sentence: str, direction: str) -> dict[str, Any]:
    """One factor as the templates and the embedded JSON take it (``raw_value`` None: a missing value)."""
    texts = shared.texts
    weight = _float(row["weight"], "weight", decision_id)
    share = _float(row["share"], "share", decision_id)
    role = row.get("role")
    return {
        "rank": int(row["rank"]),
        "role": str(role) if role in ROLES else "factor",  # tables of runs before roles: main factors
        "feature": clean_text(name, limit=120),
        "label": label,
        "condition": condition,
        "value": value,
        "raw_value": raw_value,
        "sentence": clean_text(sentence, limit=1200),
        "direction": direction,
        "direction_word": texts["customer"][f"direction_{direction}"],
        "effect": fill(texts["customer"][f"effect_{direction}"], outcome=shared.outcome_noun),
        "weight": weight,
        "share_value": share,
        "share": f"{share:.0f}%",
        "share_width": f"{min(max(share, 0.0), 100.0):.1f}",
        "weight_signed": f"{weight:+.3f}",
        "weight_exact": f"{weight:+.6f}",
        "share_exact": f"{share:.2f}%",
    }


def _chart(factors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Geometry of the signed bar chart: numbers only (labels are HTML text beside it)."""
    width, row, bar = 300, 12, 8
    axis = width / 2
    biggest = max((abs(f["weight"]) for f in factors), default=0.0) or 1.0
    bars = []
    for i, f in enumerate(factors):
        length = abs(f["weight"]) / biggest * (axis - 4)
        x = axis if f["weight"] >= 0 else axis - length
        bars.append({"x": f"{x:.2f}", "y": f"{i * row + (row - bar) / 2:.2f}", "width": f"{length:.2f}",
                     "height": f"{bar}", "positive": f["weight"] >= 0})
    return {"width": width, "height": max(len(factors), 1) * row, "axis": f"{axis:.2f}", "bars": bars}


def _decision_label(config: Config, shared: RunTexts, applicant: Mapping[str, Any] | None,
                    model_pred: float) -> str | None:
    report = config.report
    classes = config.model.classes
    if report.decision_column:
        raw = None if applicant is None else applicant.get(report.decision_column)
        if _is_missing(raw):
            return shared.texts["customer"]["not_recorded"]
        return _outcome(shared.texts, clean_text(raw, limit=80))[0]
    if len(classes) == 2:
        other = classes[1 - config.model.explain_index]
        cls = config.model.explain if is_adverse(model_pred, config) else other
        return _outcome(shared.texts, cls)[0]
    return None


_QUALITY_COLUMNS = ("stability", "order_agrees", "selection_z", "stable", "num_samples", "prediction_gap",
                    "deletion_delta", "deletion_holds", "kernel_width", "kernel_width_sqrt_d", "effective_samples",
                    "fidelity_widest")
_NEWER_QUALITY_COLUMNS = ("tied",)  # in the JSON only where the run wrote them: older runs re-render byte for byte
_MAX_K = 4  # [explain] top_k's upper bound


def _quality(row: Mapping[str, Any]) -> dict[str, Any]:
    """The explanation-quality columns of a decision (tasks/explain/aggregate.py), JSON-ready; None where absent."""
    out: dict[str, Any] = {}
    names = (*_QUALITY_COLUMNS, *(n for n in _NEWER_QUALITY_COLUMNS if n in row))
    for name in names:
        value = row.get(name)
        if _is_missing(value):
            out[name] = None
        elif isinstance(value, bool | np.bool_):
            out[name] = bool(value)
        elif name == "num_samples":
            out[name] = int(value)
        else:
            number = float(value)
            out[name] = number if math.isfinite(number) else None  # JSON has no infinity (z: nothing to separate)
    reasons = row.get("review_reasons")
    out["review_reasons"] = [] if _is_missing(reasons) or not str(reasons) else str(reasons).split(",")
    return out


def _fewer_note(tc: Mapping[str, str], count: int, k: int, outcome: str) -> str | None:
    """For an adverse decision with fewer principal reasons than k: why the list is short."""
    if count >= k:
        return None
    return fill(tc["reasons_none"] if count == 0 else tc["reasons_fewer"], count=count, outcome=outcome)


def _is_withheld(row: Mapping[str, Any]) -> bool:
    """A factor the letter does not state (``withheld``: a protected feature); tables before the column: none."""
    value = row.get("withheld")
    return not _is_missing(value) and bool(value)


def _withheld_note(tc: Mapping[str, str], count: int) -> str:
    """An adverse decision whose model leaned on a protected feature: it lists the permitted reasons only, and
    says so."""
    return fill(tc["reasons_withheld_none" if count == 0 else "reasons_withheld"], count=count)


def _fidelity_meaning(tc: Mapping[str, str], method: str, target: str, fid: str) -> str:
    """What local fidelity means under the run's method (the per-bin method says on which scale it fits)."""
    percent = _fidelity_percent(fid)
    if method == "per-bin":
        scale = tc["fidelity_scale_" + target.replace("-", "_")]
        return fill(tc["fidelity_meaning_perbin"], percent=percent, scale=scale)
    return fill(tc["fidelity_meaning_matched" if method == "kernel-matched" else "fidelity_meaning"], percent=percent)


def _review_note(tc: Mapping[str, str], reasons: list[str], fid: str, min_fid: str) -> str:
    """The status box's note: fidelity alone keeps the fidelity wording; other gates name every failed check."""
    if not reasons or reasons == ["low-fidelity"]:
        return fill(tc["status_review_note"], fidelity=fid, min=min_fid)
    labels = [tc.get("reason_" + r.replace("-", "_"), r) for r in reasons]
    return fill(tc["status_review_note_checks"], reasons="; ".join(labels))


def _quality_line(tc: Mapping[str, str], quality: Mapping[str, Any]) -> str | None:
    """The annex's one-line account of the checks, or None when the run computed none."""
    parts = []
    if quality["stable"] is not None:
        samples = f" ({quality['num_samples']:,} {tc['quality_samples']})" if quality["num_samples"] else ""
        parts.append(f"{tc['quality_stable']} {tc['yes'] if quality['stable'] else tc['no']}{samples}")
    if quality["kernel_width"] is not None:
        parts.append(fill(tc["quality_width"], width=f"{quality['kernel_width']:.4g}",
                          scale=f"{quality['kernel_width_sqrt_d']:g}" if quality["kernel_width_sqrt_d"] else "—"))
    if quality["effective_samples"] is not None:
        parts.append(f"{tc['quality_effective']} {quality['effective_samples']:,.0f}")
    if quality["prediction_gap"] is not None:
        parts.append(f"{tc['quality_gap']} {quality['prediction_gap']:.4f}")
    if quality["deletion_holds"] is not None:
        delta = f" ({quality['deletion_delta']:+.4f})" if quality["deletion_delta"] is not None else ""
        parts.append(f"{tc['quality_deletion']} {tc['yes'] if quality['deletion_holds'] else tc['no']}{delta}")
    return " · ".join(parts) or None


def report_context(decision_id: str, rows: Sequence[Mapping[str, Any]], applicant: Mapping[str, Any] | None,
                    shared: RunTexts) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template context of one report and the JSON document attached to it."""
    config, run, texts = shared.config, shared.run, shared.texts
    tc = texts["customer"]
    first = rows[0]
    fidelity = _float(first["fidelity"], "fidelity", decision_id)
    model_pred = _float(first["model_pred"], "model_pred", decision_id)
    local_pred = _float(first["local_pred"], "local_pred", decision_id)
    intercept = _float(first["intercept"], "intercept", decision_id)
    needs_review = bool(first["needs_review"])
    quality = _quality(first)
    stated = [row for row in rows if not _is_withheld(row)]  # a protected feature is never stated (docs/reports.md)
    every = [{**_factor(row, shared, decision_id), "rank": rank} for rank, row in enumerate(stated, start=1)]
    reasons = [f for f in every if f["role"] != "favourable"]
    favourable = [f for f in every if f["role"] == "favourable"] if config.report.show_favourable else []
    factors = reasons + favourable
    adverse = any(row.get("role") in ("reason", "favourable") for row in rows)  # grouped by decision: never none
    withheld_reason = any(_is_withheld(row) and row.get("role") == "reason" for row in rows)
    min_fid = threshold_text(run.min_fidelity)
    fid = fidelity_text(fidelity, run.min_fidelity)
    fields = []
    for name in config.report.applicant_fields:
        value = None if applicant is None else applicant.get(name)
        if not _is_missing(value):
            label = texts["applicant_fields"].get(name) or _humanize(name)
            fields.append({"label": clean_text(label, limit=80), "value": clean_text(value, limit=200)})
    decision_date = None
    if config.report.date_column:
        raw_date = None if applicant is None else applicant.get(config.report.date_column)
        decision_date = tc["not_recorded"] if _is_missing(raw_date) else _format_date(raw_date)
    decision = _decision_label(config, shared, applicant, model_pred)
    items = "; ".join(f"{f['label']} {f['weight_signed']}" for f in factors)
    context = {
        "decision_id": clean_text(decision_id),
        "footer_id": clean_text(decision_id, limit=48),
        "footer_ref": fill(tc["footer_ref"], id="\u2068" + clean_text(decision_id, limit=48) + "\u2069"),
        "title": shared.title,
        "fields": fields,
        "decision_date": decision_date,
        "statement_date": shared.statement_date,
        "decision": decision,
        "probability": _pct(model_pred),
        "probability_label": fill(tc["probability"], outcome=shared.outcome_noun),
        "probability_note": fill(tc["probability_note"], outcome=shared.outcome_noun),
        "needs_review": needs_review,
        "reviewed": None,  # set by tasks/report/reviewed.py once a reviewer resolved the decision
        "review_note": _review_note(tc, quality["review_reasons"], fid, min_fid),
        "quality": _quality_line(tc, quality),
        "status_note": fill(tc["status_ok_note"], min=min_fid),
        "factors": factors,
        "reasons": reasons,
        "favourable": favourable,
        "reasons_intro": fill(tc["reasons_intro_adverse" if adverse else "reasons_intro"], outcome=shared.outcome_noun),
        "fewer_note": (_withheld_note(tc, len(reasons)) if withheld_reason else
                       _fewer_note(tc, len(reasons), config.explain.top_k, shared.outcome_noun) if adverse else None),
        "tie_note": tc["reasons_tied"] if quality.get("tied") else None,
        "withheld": withheld_reason,  # a protected feature would have been a reason (reviewed.py words the note)
        "favourable_intro": fill(tc["favourable_intro"], outcome=shared.outcome_noun),
        "chart": _chart(factors),
        "chart_alt": fill(tc["chart_alt"], outcome=shared.outcome_noun, items=items),
        "chart_key": fill(tc["chart_key"], outcome=shared.outcome_noun),
        "fidelity": fid,
        "fidelity_line": fill(tc["fidelity_value"], fidelity=fid),
        "fidelity_meaning": _fidelity_meaning(tc, run.method, config.explain.target, fid),
        "surrogate": [
            {"label": tc["intercept"], "value": f"{intercept:+.6f}", "css": "num-left"},
            {"label": tc["local_pred"], "value": f"{local_pred:.6f}", "css": "num-left"},
            {"label": tc["model_pred"], "value": f"{model_pred:.6f}", "css": "num-left"},
            {"label": tc["fidelity"], "value": f"{fidelity:.6f}", "css": "num-left"},
            {"label": tc["needs_review"], "value": tc["yes"] if needs_review else tc["no"], "css": ""},
        ],
    }
    attachment = {
        "schema": EXPLANATION_SCHEMA,
        "decision_id": str(decision_id),
        "decision": decision,
        "decision_date": decision_date if config.report.date_column else None,
        "explained_class": config.model.explain,
        "model_pred": model_pred,
        "local_pred": local_pred,
        "intercept": intercept,
        "fidelity": fidelity,
        "needs_review": needs_review,
        "min_fidelity": run.min_fidelity,
        "quality": quality,
        "language": config.report.language,
        "factors": [
            {"rank": f["rank"], "role": f["role"], "feature": f["feature"], "label": f["label"],
             "condition": f["condition"], "value": f["raw_value"], "weight": f["weight"], "share": f["share_value"],
             "direction": f["direction"], "reason": f["sentence"]}
            for f in every
        ],
        "run": _run_json(run),
    }
    return context, attachment


def _run_json(run: RunInfo) -> dict[str, Any]:
    data = run.to_dict()
    return {key: data[key] for key in sorted(data)}


def run_texts(config: Config, run: RunInfo) -> RunTexts:
    """Load once what every letter of a run shares: the translation catalog, reason catalog and rights notice."""
    texts = load_texts(config.report.language)
    label, noun = _outcome(texts, config.model.explain)
    return RunTexts(
        config=config,
        run=run,
        texts=texts,
        catalog=load_reason_catalog(config),
        notice=load_notice(config),
        features={f.name: f for f in config.features},
        outcome_label=label,
        outcome_noun=noun,
        title=clean_text(config.report.title or texts["customer"]["title"], limit=200),
        statement_date=w3c_utc(run.generated_at)[0][:10],
    )


def lender_fields(config: Config) -> dict[str, Any]:
    lender = config.report.lender
    return {
        "name": clean_text(lender.name, limit=200),
        "address": [clean_text(line, limit=200) for line in lender.address],
        "contact": " · ".join(clean_text(line, limit=200) for line in lender.contact),
    }


# ---------------------------------------------------------------------------------------------- inputs


def check_columns(frame: pd.DataFrame, needed: Iterable[str], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {', '.join(repr(c) for c in missing)}")


def group_rows(rows: pd.DataFrame, id_column: str) -> dict[str, list[dict[str, Any]]]:
    """Rows per decision (in order of first appearance), sorted by rank; ranks must be 1..k without gaps."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in rows.to_dict("records"):
        groups.setdefault(str(record[id_column]), []).append(record)
    for decision_id, records in groups.items():
        records.sort(key=lambda r: int(r["rank"]))
        ranks = [int(r["rank"]) for r in records]
        if ranks != list(range(1, len(ranks) + 1)) or len(ranks) > 2 * _MAX_K:
            raise InputError(f"explanations: decision {decision_id[:80]!r}: ranks {ranks[:8]} are not 1..n "
                             f"(at most {_MAX_K} reasons and {_MAX_K} favourable factors)")
    return groups


def applicant_index(applicants: pd.DataFrame, config: Config) -> dict[str, dict[str, Any]]:
    id_column = config.data.id_column
    report = config.report
    wanted = [*report.applicant_fields, *(c for c in (report.date_column, report.decision_column) if c)]
    check_columns(applicants, [id_column, *wanted], "applicants")
    keep = list(dict.fromkeys([id_column, *wanted]))
    index: dict[str, dict[str, Any]] = {}
    for record in applicants[keep].to_dict("records"):
        key = str(record[id_column])
        if key in index:
            raise InputError(f"applicants: decision id {key[:80]!r} appears more than once")
        index[key] = record
    return index
