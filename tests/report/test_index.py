"""tasks/report/index.py: the report index beside the manifest, old inline manifests, report subfolders."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import ConfigError, InputError
from tasks.inputs.report_config import ReportConfig
from tasks.io import file_sha256
from tasks.report import index as ri
from tasks.run.manifest import describe_file

ENTRIES = [{"id": "A1", "file": "reports/A1.pdf", "sha256": "a" * 64, "needs_review": True},
           {"id": "B2", "file": "reports/B2.pdf", "sha256": "b" * 64, "needs_review": False}]


def test_index_round_trip_and_manifest_forms(tmp_path: Path):
    target = tmp_path / ri.INDEX
    assert ri.write_index([ri.entries_table(ENTRIES[:1]), ri.entries_table([]), ri.entries_table(ENTRIES[1:])],
                          target) == 2
    described = {**describe_file(target), "rows": 2}
    assert described == {"sha256": file_sha256(target), "bytes": target.stat().st_size, "rows": 2}
    manifest = {"outputs": {"reports": {"index": ri.INDEX, "count": 2}, ri.INDEX: described}}
    assert ri.manifest_reports(manifest, tmp_path).to_pylist() == ENTRIES
    old = {"outputs": {"reports": [{k: v for k, v in e.items()} for e in ENTRIES]}}  # manifest_version 1
    assert ri.manifest_reports(old, tmp_path).to_pylist() == ENTRIES
    assert ri.manifest_reports({"outputs": {}}, tmp_path) is None
    with pytest.raises(InputError, match="names no reports.parquet"):
        ri.manifest_reports({"outputs": {"reports": {"index": ri.INDEX}}}, tmp_path)
    pq.write_table(ri.entries_table(ENTRIES[:1]), target)
    with pytest.raises(InputError, match="report index SHA-256 changed since the run"):
        ri.manifest_reports(manifest, tmp_path)
    pq.write_table(pa.table({"id": ["x"]}), target)
    with pytest.raises(InputError, match=r"not a report index \(column\(s\) file, sha256, needs_review missing\)"):
        ri.read_index(target)


def test_manifest_size_does_not_grow_with_the_reports(tmp_path: Path):
    """What the manifest keeps of the reports: the index's description, the same size for 10 or 100,000."""
    sizes = []
    for count in (10, 100_000):
        entries = [{"id": f"C{i:07d}", "file": f"reports/C{i:07d}.pdf", "sha256": hashlib.sha256(b"%d" % i).hexdigest(),
                    "needs_review": i % 3 == 0} for i in range(count)]
        target = tmp_path / f"{count}.parquet"
        ri.write_index([ri.entries_table(entries)], target)
        part = {"reports": {"index": ri.INDEX, "count": 100_000}, ri.INDEX: {**describe_file(target),
                                                                            "bytes": 10**9, "rows": 100_000}}
        sizes.append(len(json.dumps(part)))
    assert sizes[0] == sizes[1]


def test_review_ids_from_the_explanations_or_inline(tmp_path: Path):
    table = pa.table({"customer_id": ["A", "A", "B", "C", "C"], "needs_review": [True, True, False, True, None]})
    pq.write_table(table, tmp_path / "explanations.parquet")
    manifest = {"review": {"count": 2, "source": "explanations.parquet"}, "inputs": {"id_column": "customer_id"}}
    assert ri.review_ids(manifest, tmp_path) == ["A", "C"]
    assert ri.review_ids({"review": {"ids": ["Z"]}}, tmp_path) == ["Z"]


def test_report_subfolders():
    assert ri.report_subfolder("flat", "C1") == ""
    assert ri.report_subfolder("hash-prefix", "C1") == hashlib.sha256(b"C1").hexdigest()[:2]
    folders = {ri.report_subfolder("hash-prefix", f"C{i}") for i in range(5000)}
    assert len(folders) == 256 and all(len(f) == 2 for f in folders)
    assert ri.report_subfolder("date", "C1", date(2026, 11, 20)) == "2026-11-20"
    assert ri.report_subfolder("date", "C1", datetime(2026, 11, 20, 23, 59)) == "2026-11-20"
    assert ri.report_subfolder("date", "C1", "2026-11-20T08:00:00") == "2026-11-20"
    assert ri.report_subfolder("date", "C1", None) == ri.UNDATED == ri.report_subfolder("date", "C1", "../x")
    with pytest.raises(ValueError):
        ri.report_subfolder("nested", "C1")


def test_date_layout_needs_a_date_column(make_config):
    import tomllib

    from tasks.inputs.config import load_config
    from tasks.io import dump_toml

    assert ReportConfig(layout="date", date_column="decision_date").layout == "date"
    config = make_config("bad.toml", report={"layout": "date"})
    raw = tomllib.loads(config.read_text(encoding="utf-8"))
    del raw["report"]["date_column"]
    config.write_text(dump_toml(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="layout = 'date' needs date_column"):
        load_config(config)
