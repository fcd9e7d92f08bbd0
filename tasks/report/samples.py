"""Synthetic explanation rows for the report renderer: tests, the benchmark and the sample page images.

The rows follow the explanations.parquet contract (docs/output-contract.md; the schema is
``tasks/explain/aggregate.py:explanation_schema``) for the demo's features, with LIME-style conditions
(quartile bands, ``name=value`` for categories). They are not model output: values, weights and fidelities are
drawn at random (seeded), only their shapes are realistic.

``python -m tasks.report.samples`` re-renders the sample page images in templates/*/sample/.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.inputs.config import Config, parse_config
from tasks.report.paths import TEMPLATES_DIR
from tasks.run.info import RunInfo

DEMO_FEATURES: list[dict[str, Any]] = [
    {"name": "annual_income", "label": "Annual income", "kind": "numeric", "unit": "GBP", "decimals": 0},
    {"name": "debt_to_income", "label": "Debt-to-income ratio", "kind": "numeric", "decimals": 2},
    {"name": "credit_utilization", "label": "Credit utilisation", "kind": "numeric", "decimals": 2},
    {"name": "delinquencies_2y", "label": "Delinquencies (2y)", "kind": "numeric", "decimals": 0},
    {"name": "credit_history_years", "label": "Credit history (years)", "kind": "numeric", "decimals": 1},
    {"name": "recent_inquiries_6m", "label": "Recent inquiries (6m)", "kind": "numeric", "decimals": 0},
    {"name": "loan_amount", "label": "Loan amount", "kind": "numeric", "unit": "GBP", "decimals": 0},
    {"name": "employment_years", "label": "Employment (years)", "kind": "numeric", "decimals": 1},
    {"name": "open_accounts", "label": "Open accounts", "kind": "numeric", "decimals": 0},
    {"name": "employment_type", "label": "Employment type", "kind": "categorical",
     "categories": ["salaried", "self_employed", "contract", "unemployed", "retired"]},
    {"name": "housing", "label": "Housing", "kind": "categorical", "categories": ["own", "mortgage", "rent", "other"]},
    {"name": "loan_purpose", "label": "Loan purpose", "kind": "categorical",
     "categories": ["debt_consolidation", "home_improvement", "car", "education", "medical", "other"]},
]

# (low, q1, q2, q3, high) per numeric feature: quartile bounds like lime's QuartileDiscretizer.
_QUARTILES = {
    "annual_income": (9000, 24000, 36000, 52000, 250000),
    "debt_to_income": (0.0, 0.12, 0.24, 0.41, 0.95),
    "credit_utilization": (0.0, 0.18, 0.39, 0.68, 1.0),
    "delinquencies_2y": (0, 0, 0, 1, 9),
    "credit_history_years": (0.0, 3.5, 8.2, 14.6, 45.0),
    "recent_inquiries_6m": (0, 0, 1, 3, 12),
    "loan_amount": (1000, 4500, 9000, 16000, 60000),
    "employment_years": (0.0, 1.2, 4.0, 9.5, 40.0),
    "open_accounts": (0, 3, 5, 8, 25),
}

FIRST_NAMES = ["Olivia", "Amelia", "Noah", "Oliver", "Isla", "Leo", "Freya", "Arthur", "Priya", "Mohammed",
               "Chen", "Siobhán", "Zoë", "Björn", "Aleksandra", "Kwame"]
LAST_NAMES = ["Smith", "Jones", "Taylor", "Brown", "Williams", "Patel", "Khan", "O'Brien", "Nowak",
              "Wang", "Evans", "Müller", "Mensah", "García", "Thompson"]
ZH_NAMES = ["王伟", "李娜", "张敏", "刘洋", "陈静", "杨磊", "赵雪", "黄强", "周婷", "吴昊"]


def demo_config_dict(language: str = "en", **report: Any) -> dict[str, Any]:
    """A config document like config/demo.toml (the model path need not exist for rendering)."""
    base_report: dict[str, Any] = {
        "language": language,
        "jurisdiction": "uk" if language == "en" else "cn",
        "lender": {"name": "Northbridge Bank plc" if language == "en" else "北桥银行",
                   "address": ["1 Example Street", "London EC1A 1AA"],
                   "contact": ["Telephone 0800 000 0000", "credit.review@northbridge.example"]},
        "applicant_fields": ["full_name"],
        "date_column": "decision_date",
    }
    base_report.update(report)
    return {
        "data": {"decisions": "decisions.parquet", "reference": "reference.parquet", "id_column": "customer_id"},
        "model": {"path": "model.pt", "classes": ["approved", "declined"], "explain": "declined"},
        "explain": {"num_samples": 5000, "top_k": 3, "seed": 20261122},
        "review": {"min_fidelity": 0.3},
        "report": base_report,
        "features": DEMO_FEATURES,
    }


def demo_config(language: str = "en", **report: Any) -> Config:
    return parse_config(demo_config_dict(language, **report), Path("/nonexistent/demo.toml"))


def demo_run(config: Config, generated_at: str = "2026-11-22T09:30:00Z") -> RunInfo:
    return RunInfo(
        run_id="20261122T093000Z-3f9c2a1b",
        generated_at=generated_at,
        config_sha256=hashlib.sha256(b"config").hexdigest(),
        model_sha256=hashlib.sha256(b"model").hexdigest(),
        decisions_sha256=hashlib.sha256(b"decisions").hexdigest(),
        reference_sha256=hashlib.sha256(b"reference").hexdigest(),
        engine=config.explain.engine,
        num_samples=config.explain.num_samples,
        top_k=config.explain.top_k,
        kernel_width=0.75 * len(config.features) ** 0.5,
        feature_selection=config.explain.feature_selection,
        seed=config.explain.seed,
        explained_class=config.model.explain,
        min_fidelity=config.review.min_fidelity,
        versions={"limelight": "0.1.0", "lime": "0.2.0.1", "torch": "2.13.0", "weasyprint": "70.0",
                  "python": "3.11"},
        method=config.explain.effective_method,
    )


def _condition(feature: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """(condition, formatted value) for one feature, lime-style."""
    name = feature["name"]
    if feature["kind"] == "categorical":
        value = rng.choice(feature["categories"])
        return f"{name}={value}", value
    lo, q1, q2, q3, hi = _QUARTILES[name]
    band = rng.randrange(4)
    bounds = [(lo, q1), (q1, q2), (q2, q3), (q3, hi)][band]
    value = rng.uniform(*bounds) if bounds[1] > bounds[0] else bounds[0]
    decimals = feature.get("decimals", 2)
    if band == 0:
        condition = f"{name} <= {q1:.2f}"
    elif band == 3:
        condition = f"{name} > {q3:.2f}"
    else:
        condition = f"{bounds[0]:.2f} < {name} <= {bounds[1]:.2f}"
    return condition, f"{value:.{decimals}f}"


def synthetic_inputs(n: int, config: Config, seed: int = 7, review_share: float = 0.15,
                     id_prefix: str = "CUST-") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` decisions: (explanations rows, applicants) for ``config`` (a demo config)."""
    rng = random.Random(seed)
    k = config.explain.top_k
    features = [f.model_dump() for f in config.features]
    rows: list[dict[str, Any]] = []
    applicants: list[dict[str, Any]] = []
    zh = config.report.language == "zh-CN"
    for i in range(n):
        decision_id = f"{id_prefix}{100000 + i}"
        chosen = rng.sample(features, k)
        weights = sorted((rng.uniform(0.02, 0.2) * rng.choice((1, 1, -1)) for _ in range(k)),
                         key=abs, reverse=True)
        total = sum(abs(w) for w in weights)
        fidelity = rng.uniform(0.05, 0.29) if rng.random() < review_share else rng.uniform(0.35, 0.95)
        intercept = rng.uniform(0.2, 0.5)
        local_pred = min(max(intercept + sum(weights), 0.0), 1.0)
        model_pred = min(max(local_pred + rng.uniform(-0.05, 0.05), 0.0), 1.0)
        for rank, (feature, weight) in enumerate(zip(chosen, weights, strict=True), start=1):
            condition, value = _condition(feature, rng)
            rows.append({
                "customer_id": decision_id, "rank": rank, "feature": feature["name"], "label": feature["label"],
                "condition": condition, "value": value, "weight": weight, "share": abs(weight) / total * 100,
                "direction": "raises" if weight > 0 else "lowers", "fidelity": fidelity,
                "local_pred": local_pred, "model_pred": model_pred, "intercept": intercept,
                "needs_review": fidelity < config.review.min_fidelity,
            })
        name = rng.choice(ZH_NAMES) if zh else f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        applicants.append({"customer_id": decision_id, "full_name": name,
                           "decision_date": pd.Timestamp("2026-11-20") + pd.Timedelta(days=i % 3)})
    frame = pd.DataFrame(rows).astype({"rank": "int32"})
    return frame, pd.DataFrame(applicants)


def _png(pdf: Path, out_png: Path, page: int = 1, resolution: int = 70) -> None:
    out_png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-png", "-r", str(resolution), "-f", str(page), "-l", str(page), "-singlefile",
                    str(pdf), str(out_png.with_suffix(""))], check=True)


def _real_inputs(explanations: Path, decisions: Path, config_path: Path, language: str):
    """Rows, applicants, config and run of a real `limelight explain` output (its RunInfo is in the metadata)."""
    import json

    import pyarrow.parquet as pq

    from tasks.inputs.config import load_config

    table = pq.read_table(explanations)
    run = RunInfo.from_dict(json.loads(table.schema.metadata[b"limelight.run"]))
    config = load_config(config_path)
    if language != config.report.language:
        report = config.report.model_copy(update={"language": language, "jurisdiction": "cn"})
        config = config.model_copy(update={"report": report})
    return table.to_pandas(), pd.read_parquet(decisions), config, run


def write_samples(root: Path, explanations: Path | None = None, decisions: Path | None = None,
                  config_path: Path | None = None) -> list[Path]:
    """Page images for reviewers in templates/*/sample/: an English report (page 1 of a declined applicant's
    letter with factors in their favour, else of a decision gated to review, and its next page), a Chinese report's
    page 1, and page 1 of each language's run summary.

    With ``explanations`` (a `limelight explain` output), ``decisions`` and ``config_path`` the images show real
    demo decisions; otherwise synthetic rows.
    """
    from tasks.report.render import render_customer_reports, render_run_summary

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for language in ("en", "zh-CN"):
            if explanations is not None and decisions is not None and config_path is not None:
                rows, applicants, config, run = _real_inputs(explanations, decisions, config_path, language)
            else:
                config = demo_config(language)
                run = demo_run(config)
                rows, applicants = synthetic_inputs(12, config, seed=11)
            reports = render_customer_reports(rows, applicants, config, run, Path(tmp) / language)
            review = [r.decision_id for r in reports if r.needs_review]
            # a declined applicant's letter with factors in their favour (what issue 11 changed), else one in review
            roles = rows.groupby("customer_id")["role"].agg(set) if "role" in rows.columns else {}
            declined = {i for i, r in dict(roles).items() if "favourable" in r and "reason" in r}
            chosen = next((r for r in reports if r.decision_id in declined),
                          next((r for r in reports if r.needs_review), reports[0]))
            target = root / "customer_report" / "sample" / f"report-{language}-page1.png"
            _png(chosen.path, target)
            written.append(target)
            if language == "en":
                target = root / "customer_report" / "sample" / "report-en-page2-annex.png"
                _png(chosen.path, target, page=2)
                written.append(target)
            counts = {"decisions_in": len(reports), "reports_made": len(reports), "needs_review": len(review),
                      "failed": 0}
            summary = render_run_summary(rows, counts, review, config, run, Path(tmp) / f"summary-{language}.pdf")
            target = root / "run_summary" / "sample" / f"summary-{language}-page1.png"
            _png(summary, target)
            written.append(target)
    return written


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description="Render the sample page images of the report templates.")
    parser.add_argument("--templates", type=Path, default=TEMPLATES_DIR)
    parser.add_argument("--explanations", type=Path, help="a `limelight explain` output (default: synthetic rows)")
    parser.add_argument("--decisions", type=Path, help="the decisions Parquet file of that run")
    parser.add_argument("--config", type=Path, help="the config of that run")
    args = parser.parse_args()
    for path in write_samples(args.templates, args.explanations, args.decisions, args.config):
        print(path)
