"""A letter whose model leaned on a protected feature: it names the permitted reasons only, says so, and is in
review; the run summary's "Prohibited bases" section (only in runs with protected features)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from render_support import embedded_files, flat, pdf_text

from tasks.inputs.config import parse_config
from tasks.report.render import render_customer_reports, render_run_summary
from tasks.report.samples import demo_config_dict, demo_run, synthetic_inputs


def _config(language: str):
    raw = demo_config_dict(language)
    raw["features"] = [{**f, **({"protected": True} if f["name"] == "housing" else {})} for f in raw["features"]]
    return parse_config(raw, Path("/nonexistent/demo.toml"))


def _decision(config, decision_id: str = "CUST-PROT-1") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A decline whose first principal reason was the protected housing status, then two permitted ones."""
    labels = {f.name: f.label for f in config.features}
    base = {"customer_id": decision_id, "fidelity": 0.8, "local_pred": 0.7, "model_pred": 0.72, "intercept": 0.3,
            "needs_review": True, "review_reasons": "protected-basis"}
    factors = [("housing", "reason", "housing=rent", "rent", 0.20, 100 * 0.2 / 0.2, True),
               ("debt_to_income", "reason", "debt_to_income > 0.41", "0.55", 0.15, 75.0, False),
               ("credit_utilization", "reason", "credit_utilization > 0.62", "0.80", 0.05, 25.0, False)]
    rows = [{**base, "rank": rank, "role": role, "feature": name, "label": labels[name], "condition": condition,
             "value": value, "weight": weight, "share": share, "direction": "raises", "withheld": withheld}
            for rank, (name, role, condition, value, weight, share, withheld) in enumerate(factors, start=1)]
    applicants = pd.DataFrame([{"customer_id": decision_id, "full_name": "Ada Example",
                                "decision_date": pd.Timestamp("2026-11-20")}])
    return pd.DataFrame(rows).astype({"rank": "int32"}), applicants


@pytest.mark.parametrize("language", ["en", "zh-CN"])
def test_a_protected_reason_is_never_stated_and_the_letter_says_so(language: str, tmp_path: Path) -> None:
    from tasks.report.text import load_texts

    config = _config(language)
    rows, applicants = _decision(config)
    report = render_customer_reports(rows, applicants, config, demo_run(config), tmp_path)[0]
    text = flat(pdf_text(report.path))
    texts = load_texts(language)
    assert "Housing status" not in text and "housing" not in text.lower()
    assert flat(texts["customer"]["reasons_withheld"].replace("{count}", "2"))[:30] in text
    assert flat(texts["customer"]["status_review_heading"]) in text
    document = json.loads(embedded_files(report.path)["explanation.json"])
    assert [f["feature"] for f in document["factors"]] == ["debt_to_income", "credit_utilization"]
    assert [f["rank"] for f in document["factors"]] == [1, 2]
    assert document["quality"]["review_reasons"] == ["protected-basis"]


def test_the_summary_shows_the_section_only_in_runs_with_protected_features(tmp_path: Path) -> None:
    config = _config("en")
    rows, _ = _decision(config)
    others, _ = synthetic_inputs(3, config, seed=4)
    others = others[others["feature"] != "housing"].copy()
    others["role"], others["withheld"], others["review_reasons"] = "reason", False, ""
    table = pd.concat([rows, others], ignore_index=True)
    counts = {"decisions_in": 4, "reports_made": 4, "needs_review": 1, "failed": 0}
    path = render_run_summary(table, counts, ["CUST-PROT-1"], config, demo_run(config), tmp_path / "s.pdf")
    text = flat(pdf_text(path))
    assert "Prohibited bases" in text and "protected.parquet" in text and "protected basis" in text
    attached = json.loads(embedded_files(path)["run-summary.json"])
    assert attached["protected"]["features"] == [{
        "feature": "housing", "label": "Housing", "rule": "prohibited", "reason_decisions": 1,
        "mean_weight": 0.2, "omitted_decisions": 1}]
    assert attached["quality"]["review_reasons"]["protected-basis"] == 1
    assert all(r["feature"] != "housing" for r in attached["reason_frequency"])  # what letters state
    plain = parse_config(demo_config_dict("en"), Path("/nonexistent/demo.toml"))
    path = render_run_summary(table.drop(columns=["withheld"]), counts, [], plain, demo_run(plain),
                              tmp_path / "plain.pdf")
    attached = json.loads(embedded_files(path)["run-summary.json"])
    assert "protected" not in attached and "protected-basis" not in attached["quality"]["review_reasons"]
    assert "Prohibited bases" not in flat(pdf_text(path))


def test_an_accepted_letter_keeps_the_permitted_reasons_and_its_note_promises_nothing() -> None:
    from tasks.report.letter import report_context, run_texts
    from tasks.report.review import Resolution
    from tasks.report.reviewed import revise

    config = _config("en")
    rows, applicants = _decision(config)
    shared = run_texts(config, demo_run(config))
    context, attachment = report_context("CUST-PROT-1", rows.to_dict("records"), None, shared)
    assert [f["feature"] for f in context["reasons"]] == ["debt_to_income", "credit_utilization"]
    assert "member of staff will review" in context["fewer_note"]
    revise(context, attachment, Resolution("CUST-PROT-1", "accept", (), "", "r1", "2026-12-07T09:00:00Z"), {},
           shared)
    assert [f["feature"] for f in context["reasons"]] == ["debt_to_income", "credit_utilization"]
    assert context["fewer_note"].startswith("Only 2 principal reason(s) are listed")
    assert "review" not in context["fewer_note"]
