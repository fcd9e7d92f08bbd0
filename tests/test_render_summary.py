"""The run summary PDF: counts, fidelity histogram, reason frequencies, review list, parameters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pikepdf
import pytest
from test_render_support import demo_config, demo_run, embedded_files, flat, pdf_text, synthetic_inputs

from tasks.errors import InputError
from tasks.render import render_run_summary


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


def test_summary_needs_the_count_keys(tmp_path: Path) -> None:
    config = demo_config("en")
    rows, _ = synthetic_inputs(2, config)
    with pytest.raises(InputError, match="reports_made"):
        render_run_summary(rows, {"decisions_in": 2}, [], config, demo_run(config), tmp_path / "s.pdf")
