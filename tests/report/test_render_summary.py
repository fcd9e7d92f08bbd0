"""The run summary PDF: counts, fidelity histogram, reason frequencies, review list, parameters."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pandas as pd
import pikepdf
import pytest
from render_support import decoded_pdf, demo_config, demo_run, embedded_files, flat, pdf_text, synthetic_inputs

from tasks.errors import InputError
from tasks.report.render import render_run_summary
from tasks.report.summary import sample_rounds
from tasks.report.text import fidelity_text


def test_summary_content_and_archival_metadata(tmp_path: Path) -> None:
    config = demo_config("en", review_list_limit=5)
    run = demo_run(config)
    rows, _ = synthetic_inputs(60, config, seed=4, review_share=0.3)
    review = sorted(rows.loc[rows["needs_review"], "customer_id"].unique())
    assert len(review) > 5
    counts = {"decisions_in": 61, "reports_made": 60, "needs_review": len(review), "failed": 1, "shards": 3}
    path = render_run_summary(rows, counts, review, config, run, tmp_path / "summary.pdf")
    assert path == tmp_path / "summary.pdf"
    text = flat(pdf_text(path))
    assert f"Counts 61 60 {len(review)} 1 3 Decisions in Reports made Gated to human review Failed Shards" in text
    for decision_id in review[:5]:
        assert decision_id in text
    assert review[5] not in text
    assert f"and {len(review) - 5} more" in text
    per_decision = rows.drop_duplicates("customer_id")
    below = int((per_decision["fidelity"] < run.min_fidelity).sum())
    assert f"{below} of 60 decisions below the minimum" in text
    assert "Debt-to-income ratio" in text or "Annual income" in text  # reason labels from the catalog
    assert run.decisions_sha256 in text and run.model_sha256 in text and run.run_id in text
    attached = json.loads(embedded_files(path)["run-summary.json"])
    assert attached["review_ids"] == review
    assert sum(attached["fidelity_histogram"].values()) == 60
    frequency = {r["feature"]: r for r in attached["reason_frequency"]}
    assert sum(r["total"] for r in frequency.values()) == len(rows)
    first = rows[rows["rank"] == 1]["feature"].value_counts()
    assert all(frequency[f]["first"] == n for f, n in first.items())
    with pikepdf.open(path) as pdf:
        with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
            assert meta.get("pdfaid:part") == "3"
        assert pdf.Root.AF[0].AFRelationship == "/Data"
    again = render_run_summary(rows, counts, review, config, run, tmp_path / "again.pdf")
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_chinese_summary_and_empty_review(tmp_path: Path) -> None:
    config = demo_config("zh-CN")
    run = demo_run(config)
    rows, _ = synthetic_inputs(8, config, seed=6, review_share=0.0)
    counts = {"decisions_in": 8, "reports_made": 8, "needs_review": 0, "failed": 0}
    path = render_run_summary(rows, counts, [], config, run, tmp_path / "s.pdf")
    text = flat(pdf_text(path))
    assert "解释运行汇总" in text and "没有需要复核的决定" in text and "各理由出现的频率" in text


def test_drift_section_only_with_a_comparison(tmp_path: Path) -> None:
    """A run compared with a baseline gets the drift section (zh-CN here) and ``drift`` in the attachment; a run
    without one neither."""
    from tasks.inputs.drift_config import DriftConfig
    from tasks.run.drift import baseline_record, compare, run_profile

    config = demo_config("zh-CN")
    run = demo_run(config)
    rows, _ = synthetic_inputs(30, config, seed=6, review_share=0.0)
    rows["role"] = "reason"
    rows.to_parquet(tmp_path / "base.parquet")
    shifted = rows.assign(feature=rows["feature"].where(rows["rank"] != 1, "credit_utilization"))
    shifted.to_parquet(tmp_path / "now.parquet")
    drift = {"baseline": baseline_record({"run_id": "night-1", "trigger": {"run_date": "2026-11-20"}},
                                         tmp_path / "manifest.json", "previous run"),
             **compare(run_profile(tmp_path / "base.parquet"), run_profile(tmp_path / "now.parquet"),
                       DriftConfig(min_decisions=10))}
    counts = {"decisions_in": 30, "reports_made": 30, "needs_review": 0, "failed": 0}
    plain = render_run_summary(rows, counts, [], config, run, tmp_path / "plain.pdf")
    assert "与上一次运行的比较" not in pdf_text(plain)
    assert "drift" not in json.loads(embedded_files(plain)["run-summary.json"])
    path = render_run_summary(rows, counts, [], config, run, tmp_path / "drift.pdf", drift=drift)
    text = "".join(pdf_text(path).split())
    assert "与上一次运行的比较" in text and "基准：运行night-1（2026-11-20当晚）" in text
    assert "信用额度使用率" in text and "需处理" in text  # the shifted feature by its label, marked "act"
    assert json.loads(embedded_files(path)["run-summary.json"])["drift"] == drift


def test_summary_needs_the_count_keys(tmp_path: Path) -> None:
    config = demo_config("en")
    rows, _ = synthetic_inputs(2, config)
    with pytest.raises(InputError, match="reports_made"):
        render_run_summary(rows, {"decisions_in": 2}, [], config, demo_run(config), tmp_path / "s.pdf")


def _with_quality(rows: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """The synthetic rows with issue 6's quality columns, as the stable engine (R = 2 streams of S/2, S = 5000,
    factor 16) writes them: decisions that never became stable spent the cap (80,000) and are gated as 'unstable'."""
    rng = random.Random(seed)
    per_id = {}
    for decision_id, fidelity in rows.drop_duplicates("customer_id")[["customer_id", "fidelity"]].itertuples(
            index=False):
        samples = rng.choice((5_000, 5_000, 5_000, 10_000, 20_000, 40_000, 80_000))
        stable = samples < 80_000 or rng.random() < 0.3
        gap = rng.choice((0.01, 0.02, 0.4)) if fidelity >= 0.3 else 0.05
        reasons = [r for r, failed in (("low-fidelity", fidelity < 0.3), ("prediction-gap", gap > 0.3),
                                       ("unstable", not stable)) if failed]
        per_id[decision_id] = {"num_samples": samples, "stable": stable, "stability": 1.0 if stable else 0.0,
                               "order_agrees": stable, "selection_z": 3.0 if stable else 0.5, "prediction_gap": gap,
                               "deletion_delta": 0.1, "deletion_holds": True, "review_reasons": ",".join(reasons),
                               "needs_review": bool(reasons)}
    extra = pd.DataFrame([per_id[i] for i in rows["customer_id"]], index=rows.index)
    return pd.concat([rows.drop(columns=["needs_review"]), extra], axis=1)


def test_summary_shows_samples_gates_review_reasons_and_quality_settings(tmp_path: Path) -> None:
    config = demo_config("en", review_list_limit=200)
    run = demo_run(config)
    rows = _with_quality(synthetic_inputs(80, config, seed=5, review_share=0.2)[0])
    firsts = rows[rows["rank"] == 1]
    review = sorted(firsts.loc[firsts["needs_review"], "customer_id"])
    reasons = {i: r.split(",") for i, r in zip(firsts["customer_id"], firsts["review_reasons"], strict=True)}
    assert any(len(r) > 1 for r in reasons.values())
    counts = {"decisions_in": 80, "reports_made": 80, "needs_review": len(review), "failed": 0}
    path = render_run_summary(rows, counts, review, config, run, tmp_path / "summary.pdf")
    text = flat(pdf_text(path))
    # samples chart: one bar per adaptation round (S · 1, 2, 4, 8, 16), stable / not stable in the alt text
    assert "Samples per decision" in text
    assert "5,000 10,000 20,000 40,000 80,000 1× 2× 4× 8× 16×" in text  # the axis: samples, then the factor
    alt = decoded_pdf(path)
    for samples in (5_000, 10_000, 20_000, 40_000, 80_000):
        at = firsts[firsts["num_samples"] == samples]
        item = f"{samples:,}: {int(at['stable'].sum())} stable, {int((~at['stable']).sum())} not stable"
        assert item.encode() in alt
    # gating breakdown: decisions per failed check (several per decision possible)
    label = {"low-fidelity": "low fidelity", "no-width": "no faithful width", "prediction-gap": "prediction gap",
             "unstable": "unstable",
             "deletion-fails": "deletion check"}
    assert "Review checks failed" in text
    for reason, name in label.items():  # the table sits beside the samples chart: read each row's text alternative
        assert f"{name}: {sum(reason in rs for rs in reasons.values())} decisions".encode() in alt, reason
    assert f"Decisions gated to human review: {len(review)}; a decision can fail several checks" in text
    # the review list names each decision's failed checks (raw order: the list is set in columns)
    raw = subprocess.run(["pdftotext", "-raw", "-enc", "UTF-8", str(path), "-"], check=True,
                         capture_output=True).stdout.decode("utf-8").splitlines()
    for decision_id in review:
        fidelity = firsts.loc[firsts["customer_id"] == decision_id, "fidelity"].iloc[0]
        named = ", ".join(label[r] for r in reasons[decision_id])
        assert f"{decision_id} {fidelity_text(fidelity, run.min_fidelity)} · {named}" in raw
    # the quality settings in the parameters
    for row in ("Kernel widths tried (× √d) 0.75, 0.35, 0.2, 0.12, 0.08",
                "Held-out fidelity a width must reach 0.50",
                "Sampling design Sobol sequence, shifted per decision and stream (randomised quasi-Monte Carlo)",
                "Independent sample streams (R) 2", "Adaptive sample size yes, doubling up to 16× S",
                "Confidence of a stable set of reasons 0.95", "Maximum prediction gap allowed 0.30",
                "Unstable reasons: human review yes", "Failed deletion check: human review no"):
        assert row in text
    attached = json.loads(embedded_files(path)["run-summary.json"])
    assert attached["quality_settings"] == {
        "method": "per-bin", "width_grid": [0.75, 0.35, 0.2, 0.12, 0.08], "target_fidelity": 0.5,
        "min_effective_share": 0.2, "min_contrasts": 50,
        "design": "sobol", "stability_runs": 2, "adaptive": True, "max_samples_factor": 16, "confidence": 0.95,
        "min_fidelity": 0.3,
        "max_prediction_gap": 0.3, "require_width": True, "require_stable": True, "require_deletion": False,
        "target": "log-odds"}
    assert sum(sum(v.values()) for v in attached["samples_per_decision"].values()) == 80


def test_sample_rounds_follow_the_explain_settings() -> None:
    config = demo_config("en")
    assert sample_rounds(config) == [5_000, 10_000, 20_000, 40_000, 80_000]  # R streams of S/R, doubling to 16 S
    explain = config.explain
    plain = config.model_copy(update={"explain": explain.model_copy(update={"stability_runs": 1})})
    assert sample_rounds(plain) == [5000]
    fixed = config.model_copy(update={"explain": explain.model_copy(update={"adaptive": False, "stability_runs": 3})})
    assert sample_rounds(fixed) == [5_001]  # three streams of ceil(5000 / 3)


def test_chinese_summary_quality_labels(tmp_path: Path) -> None:
    config = demo_config("zh-CN")
    rows = _with_quality(synthetic_inputs(30, config, seed=8, review_share=0.3)[0])
    firsts = rows[rows["rank"] == 1]
    review = sorted(firsts.loc[firsts["needs_review"], "customer_id"])
    counts = {"decisions_in": 30, "reports_made": 30, "needs_review": len(review), "failed": 0}
    path = render_run_summary(rows, counts, review, config, demo_run(config), tmp_path / "s.pdf")
    text = flat(pdf_text(path))
    assert "每个决定的样本数" in text and "未通过的复核检查" in text and "保真度低" in text
    assert "独立样本流数（R） 2" in text and "理由不稳定时转人工复核 是" in text


def test_summary_layout_2_lists_the_most_severe_and_the_first_failures(tmp_path: Path) -> None:
    """Layout 2 (runs from the scalable summary on): top-N tables whatever the run's size, the full lists named
    as Parquet files, no per-decision list in the attachment."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.report.summary_lists import TOP, review_top

    config = demo_config("en")
    run = demo_run(config)
    rows = _with_quality(synthetic_inputs(160, config, seed=5, review_share=0.4)[0])
    firsts = rows[rows["rank"] == 1]
    flagged = firsts[firsts["needs_review"]]
    assert len(flagged) > TOP
    failures = tmp_path / "failures.parquet"
    lost = [f"LOST-{i}" for i in range(TOP + 5)]
    pq.write_table(pa.table({"customer_id": lost, "stage": ["explain"] * (TOP + 3) + ["render"] * 2,
                             "error": ["model raised ValueError"] * (TOP + 5)}), failures)
    counts = {"decisions_in": 185, "reports_made": 160, "needs_review": len(flagged), "failed": TOP + 5}
    path = render_run_summary(rows, counts, [], config, run, tmp_path / "s.pdf", layout=2, failures=failures)
    text = flat(pdf_text(path))
    top = review_top(firsts, "customer_id", [], TOP)
    checks = top["review_reasons"].str.count(",").tolist()
    assert checks == sorted(checks, reverse=True) and len(top) == TOP  # most checks failed first
    for decision_id in top["id"]:
        assert decision_id in text
    assert not set(flagged["customer_id"]) - set(top["id"]) & set(text.split())
    assert f"The {TOP} most severe of {len(flagged)} are listed" in text
    assert f"The full review queue, {len(flagged)} decisions" in text and "review.parquet" in text
    assert f"Decisions that got no report: {TOP + 5} (explanation: {TOP + 3}, report: 2)" in text
    assert lost[TOP - 1] in text and lost[TOP] not in text and "failures.parquet" in text
    attached = json.loads(embedded_files(path)["run-summary.json"])
    assert "review_ids" not in attached and attached["layout"] == 2
    assert attached["review"] == {"count": len(flagged), "file": "review.parquet", "shown": top["id"].tolist()}
    assert attached["failures"]["count"] == TOP + 5 and attached["failures"]["by_stage"] == {"explain": TOP + 3,
                                                                                           "render": 2}
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    assert int(info.split("Pages:")[1].split()[0]) <= 4  # the tables are TOP rows long: not the run's size
