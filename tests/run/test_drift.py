"""tasks/run/drift.py: the PSI and KS figures, a run's profile, finding the baseline, the comparison's warnings."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tasks.errors import InputError
from tasks.inputs.drift_config import DriftConfig
from tasks.run.drift import (
    baseline_profile,
    compare,
    find_baseline,
    ks_distance,
    output_root,
    psi,
    run_profile,
    share_psi,
)


def test_psi_known_values():
    # 50/50 -> 25/75: 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)  # counts or shares alike
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # an empty cell counts as epsilon: 0.1 -> 0 of one cell
    expected = (1e-4 - 0.1) * math.log(1e-4 / 0.1) + (1 - 0.9) * math.log(1 / 0.9)
    assert psi([0.1, 0.9], [0.0, 1.0], epsilon=1e-4) == pytest.approx(expected)
    assert share_psi(0.2, 0.45) == pytest.approx(psi([0.2, 0.8], [0.45, 0.55]))
    assert share_psi(0.2, 0.45) > 0.25 > share_psi(0.2, 0.25)  # 20% -> 45% of declines: act; -> 25%: not
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_ks_distance_of_binned_distributions():
    assert ks_distance([1, 1, 2], [1, 1, 2]) == 0.0
    assert ks_distance([4, 0, 0, 0], [0, 0, 0, 4]) == 1.0
    assert ks_distance([1, 1, 1, 1], [2, 1, 1, 0]) == pytest.approx(0.25)


def _explanations(path, declines_naming, approved=0, review=0):
    """One decline per entry of ``declines_naming`` (its reasons), plus approved decisions with one factor."""
    rows = []
    for n, reasons in enumerate(declines_naming):
        for rank, feature in enumerate(reasons, 1):
            rows.append({"customer_id": f"D{n}", "rank": rank, "role": "reason", "feature": feature,
                         "fidelity": 0.9, "needs_review": n < review})
    for n in range(approved):
        rows.append({"customer_id": f"A{n}", "rank": 1, "role": "factor", "feature": "income", "fidelity": 0.5,
                     "needs_review": False})
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_profile_counts_declines_reasons_review_and_fidelity(tmp_path):
    table = _explanations(tmp_path / "e.parquet", [["util", "dti"], ["util"], ["age"]], approved=2, review=1)
    profile = run_profile(table)
    assert profile["decisions"] == 5 and profile["declines"] == 3 and profile["review"] == 1
    assert profile["reasons"] == {"age": 1, "dti": 1, "util": 2}
    assert sum(profile["fidelity_bins"]) == 5 and profile["fidelity_bins"][45] == 3  # 0.9 in [0.90, 0.92)
    assert profile["fidelity_quantiles"]["p50"] == 0.9
    json.dumps(profile)  # JSON-ready for the manifest


def test_same_mix_no_warning_shifted_mix_names_the_feature(tmp_path):
    t = DriftConfig(min_decisions=10)
    same = run_profile(_explanations(tmp_path / "a.parquet", [["util", "dti"]] * 20 + [["dti"]] * 80, approved=100))
    again = run_profile(_explanations(tmp_path / "b.parquet", [["util", "dti"]] * 21 + [["dti"]] * 79, approved=100))
    result = compare(same, again, t)
    assert result["warnings"] == [] and {r["status"] for r in result["reason_mix"]["features"]} == {"stable"}
    shifted = run_profile(_explanations(tmp_path / "c.parquet", [["util", "dti"]] * 45 + [["dti"]] * 55,
                                        approved=100))
    result = compare(same, shifted, t, labels={"util": "Credit utilisation"})
    assert [r["feature"] for r in result["reason_mix"]["features"] if r["status"] == "act"] == ["util"]
    assert len(result["warnings"]) == 1
    assert "Credit utilisation (util)" in result["warnings"][0] and "45% of declines, 20%" in result["warnings"][0]
    # too few declines to judge: the same figures, no warning
    quiet = compare(same, shifted, DriftConfig(min_decisions=150))
    assert quiet["reason_mix"]["features"] == result["reason_mix"]["features"] and quiet["warnings"] == []


def test_review_share_and_decline_rate_warnings(tmp_path):
    t = DriftConfig(min_decisions=10)
    base = run_profile(_explanations(tmp_path / "a.parquet", [["util"]] * 50, approved=150, review=5))
    doubled = run_profile(_explanations(tmp_path / "b.parquet", [["util"]] * 50, approved=150, review=12))
    result = compare(base, doubled, t)
    assert result["review"]["status"] == "act" and result["review"]["ratio"] == 2.4
    assert [w.split(":")[0] for w in result["warnings"]] == ["review drift"]
    more_declines = run_profile(_explanations(tmp_path / "c.parquet", [["util"]] * 80, approved=120, review=5))
    result = compare(base, more_declines, t)
    assert result["decline_rate"] == {"rate": 0.4, "baseline_rate": 0.25, "change": 0.15, "status": "act"}
    assert [w.split(":")[0] for w in result["warnings"]] == ["decline drift"]
    assert result["warnings"][0].endswith("moved most: util, +15.0 declines naming it per 100 decisions")


def _publish(folder, config, run_date, finished, profile=None):
    folder.mkdir(parents=True)
    manifest = {"run_id": folder.name, "config": {"path": str(config)}, "trigger": {"run_date": run_date},
                "finished_at": finished, **({"drift_profile": profile} if profile else {})}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def test_the_baseline_is_the_previous_night_of_the_same_config(tmp_path):
    config, other = tmp_path / "limelight.toml", tmp_path / "other.toml"
    root = tmp_path / "nightly"
    assert output_root(str(root / "{date}")) == (root, 1)
    assert output_root(str(tmp_path / "runs" / "{date}" / "{run_id}")) == (tmp_path / "runs", 2)
    assert output_root(str(root / "2026-11-20")) == (root, 1)
    assert find_baseline(str(root / "{date}"), root / "2026-11-21", config, "2026-11-22T02:00:00Z",
                         "2026-11-21") is None  # no root yet: no baseline, no error
    _publish(root / "2026-11-19", config, "2026-11-19", "2026-11-20T02:10:00Z")
    night20 = _publish(root / "2026-11-20", config, "2026-11-20", "2026-11-21T02:10:00Z")
    _publish(root / "2026-11-20-other", other, "2026-11-20", "2026-11-21T03:10:00Z")  # another config
    _publish(root / "2026-11-22", config, "2026-11-22", "2026-11-23T02:10:00Z")  # a later night (a backfill)
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{not json")
    found = find_baseline(str(root / "{date}"), root / "2026-11-21", config, "2026-11-24T09:00:00Z", "2026-11-21")
    assert found == night20
    # without nights: the latest finished before this run started, never the run's own folder
    found = find_baseline(str(root / "2026-11-22"), root / "2026-11-22", config, "2026-11-23T05:00:00Z", None)
    assert found == night20


def test_baseline_profile_from_the_manifest_or_the_parquet(tmp_path):
    (tmp_path / "run").mkdir()
    table = _explanations(tmp_path / "run" / "explanations.parquet", [["util"]] * 3, approved=1)
    manifest = tmp_path / "run" / "manifest.json"
    manifest.write_text(json.dumps({"run_id": "r1", "outputs": {}}))
    assert baseline_profile(manifest)[1] == run_profile(table)  # an older run: read from its Parquet
    manifest.write_text(json.dumps({"run_id": "r1", "outputs": {"explanations.parquet": {"sha256": "0" * 64}}}))
    with pytest.raises(InputError, match="explanations.parquet: SHA-256 changed"):
        baseline_profile(manifest)
    manifest.write_text(json.dumps({"run_id": "r1", "drift_profile": {"version": 1, "decisions": 7}}))
    assert baseline_profile(manifest)[1]["decisions"] == 7
    with pytest.raises(InputError, match="--baseline .*missing.json: not found"):
        baseline_profile(tmp_path / "missing.json")


def test_reasons_are_counted_once_per_decision_whatever_its_id_holds(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = ["a\x1fdebt", "a\x1fdebt", "a\x1fdebt", "b", "b", "c\x1f"]
    table = pa.table({"loan": ids, "rank": [1, 2, 3, 1, 2, 1], "role": ["reason"] * 5 + ["favourable"],
                      "feature": ["income", "income", "debt", "debt", "age", "income"],
                      "fidelity": [0.9] * 6, "needs_review": [False] * 6})
    path = tmp_path / "explanations.parquet"
    pq.write_table(table, path)
    profile = run_profile(path)
    assert profile["reasons"] == {"age": 1, "debt": 2, "income": 1}  # a's income twice: once; c's is favourable
    assert (profile["decisions"], profile["declines"]) == (3, 3)
